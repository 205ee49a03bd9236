#!/bin/sh
# orininu-cdc, the mongoimport path (the original project's shape): export the outbox into archive
# batches, load every batch not yet loaded with mongoimport, in order, then record each as loaded.
# ops/cron/cdc-mongoimport.cron runs it every 5 minutes; ops/README.md, "The mongoimport path".
#
# Needs mongoimport (MongoDB Database Tools 100.3 or later, for --config) and mongosh on PATH, and
# the environment of cdc: CDC_PG_DSN, CDC_MONGO_URI, CDC_MONGO_DB, CDC_ARCHIVE_DIR (the cron line
# sources /etc/orininu-cdc/cdc.env). The MongoDB URI never becomes an argument: mongoimport reads it
# from a 0600 file written here, mongosh from its environment. CDC names the cdc executable.
#
# The steps, by hand:
#     cdc export --once
#     cdc archive mongoimport-commands --unloaded --mark-loaded cdc > load.sh
#     sh -eu load.sh
# A failed line stops it: that batch and the later ones stay unmarked, and the next run loads them
# again from that batch (loading a batch again is harmless while no later batch was loaded).
set -eu
CDC=${CDC:-/opt/orininu-cdc/.venv/bin/cdc}
: "${CDC_MONGO_URI:?CDC_MONGO_URI is not set (see /etc/orininu-cdc/cdc.env)}"
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
"$CDC" export --once
quoted=$(printf '%s' "$CDC_MONGO_URI" | sed "s/'/''/g")
printf "uri: '%s'\n" "$quoted" >"$work/mongoimport.yaml"
"$CDC" archive mongoimport-commands --unloaded --config "$work/mongoimport.yaml" --mark-loaded "$CDC" >"$work/load.sh"
sh -eu "$work/load.sh"
