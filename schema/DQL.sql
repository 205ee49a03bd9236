-- Validation queries for the Orininu schema, run by `cdc schema check`.
-- Each block starts with `-- name: <name>` and a `-- kind:` line:
--   check   returns one row with one integer column, `problems`; anything above 0 fails the check
--   report  returns rows that are printed for information
-- The orphan checks find rows whose parent is missing, which the foreign keys prevent
-- unless they were bypassed (session_replication_role = replica, a partial restore, ...).

-- name: row_counts
-- kind: report
SELECT 'users' AS table_name, count(*) AS row_count FROM users
UNION ALL SELECT 'artists', count(*) FROM artists
UNION ALL SELECT 'albums', count(*) FROM albums
UNION ALL SELECT 'songs', count(*) FROM songs
UNION ALL SELECT 'user_interaction', count(*) FROM user_interaction
UNION ALL SELECT 'playlists', count(*) FROM playlists
UNION ALL SELECT 'playlist_songs', count(*) FROM playlist_songs;

-- name: orphan_albums_artist
-- kind: check
SELECT count(*) AS problems FROM albums a
WHERE NOT EXISTS (SELECT 1 FROM artists r WHERE r.artist_id = a.artist_id);

-- name: orphan_songs_album
-- kind: check
SELECT count(*) AS problems FROM songs s
WHERE NOT EXISTS (SELECT 1 FROM albums a WHERE a.album_id = s.album_id);

-- name: orphan_songs_artist
-- kind: check
SELECT count(*) AS problems FROM songs s
WHERE NOT EXISTS (SELECT 1 FROM artists r WHERE r.artist_id = s.artist_id);

-- name: orphan_interaction_user
-- kind: check
SELECT count(*) AS problems FROM user_interaction i
WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = i.user_id);

-- name: orphan_interaction_song
-- kind: check
SELECT count(*) AS problems FROM user_interaction i
WHERE NOT EXISTS (SELECT 1 FROM songs s WHERE s.song_id = i.song_id);

-- name: orphan_playlists_user
-- kind: check
SELECT count(*) AS problems FROM playlists p
WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = p.user_id);

-- name: orphan_playlist_songs_playlist
-- kind: check
SELECT count(*) AS problems FROM playlist_songs ps
WHERE NOT EXISTS (SELECT 1 FROM playlists p WHERE p.playlist_id = ps.playlist_id);

-- name: orphan_playlist_songs_song
-- kind: check
SELECT count(*) AS problems FROM playlist_songs ps
WHERE NOT EXISTS (SELECT 1 FROM songs s WHERE s.song_id = ps.song_id);

-- name: plays_longer_than_song
-- kind: check
SELECT count(*) AS problems FROM user_interaction i JOIN songs s USING (song_id)
WHERE i.played_ms > s.duration_ms;

-- name: top_songs
-- kind: report
SELECT s.song_id, s.title, count(*) AS plays
FROM user_interaction i JOIN songs s USING (song_id)
WHERE i.kind = 'play'
GROUP BY s.song_id, s.title
ORDER BY plays DESC, s.song_id
LIMIT 5;

-- name: plays_per_user
-- kind: report
SELECT count(*) AS users_with_plays,
       coalesce(round(avg(plays), 2), 0) AS avg_plays,
       coalesce(max(plays), 0) AS max_plays
FROM (SELECT user_id, count(*) AS plays FROM user_interaction WHERE kind = 'play' GROUP BY user_id) p;

-- name: playlist_lengths
-- kind: report
SELECT count(*) AS playlists,
       coalesce(min(n), 0) AS min_songs,
       coalesce(max(n), 0) AS max_songs
FROM (SELECT p.playlist_id, count(ps.song_id) AS n
      FROM playlists p LEFT JOIN playlist_songs ps USING (playlist_id)
      GROUP BY p.playlist_id) l;
