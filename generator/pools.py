"""Value pools drawn once per seed with faker, then sampled per row (faker per row is too slow)."""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

from faker import Faker

GENRES = (
    "pop", "rock", "hip hop", "r&b", "jazz", "blues", "classical", "electronic", "house", "techno",
    "ambient", "folk", "country", "metal", "punk", "indie", "k-pop", "j-pop", "latin", "reggaeton",
    "afrobeats", "soul", "funk", "disco", "soundtrack",
)  # fmt: skip
DEVICES = ("ios", "android", "web", "desktop-mac", "desktop-windows", "smart-speaker", "car", "tv")
LABEL_SUFFIXES = ("Records", "Music", "Recordings", "Sound", "Audio", "Entertainment")
THEMES = ("light", "dark", "system")
LANGUAGES = ("en", "es", "pt", "fr", "de", "ja", "ko", "ar", "hi", "zh")

# Values that break naive pipelines, used at a low rate: unicode of every direction and width,
# quotes, backslashes, control-ish whitespace, combining marks.
HOSTILE_TEXT = (
    "東京の夜 (Tokyo Night)",
    "서울 블루스",
    "مرحبا بالعالم",
    "שיר השירים",
    "🎶 Dance 💃🏽 Floor 🪩",
    "O'Brien's \"Greatest\" Hits",
    "Back\\slash \\N not null",
    "Tab\tand\nnewline",
    "Zoë Ångström\u2013Øster",
    "e\u0301\u0302 combining marks",
    "Ελληνικά και Кириллица",
    "  leading and trailing spaces  ",
    'comma, "quote", and ; semicolon',
)


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "", ascii_text.lower()) or "user"


@dataclass(frozen=True)
class Pools:
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    words: tuple[str, ...]
    countries: tuple[str, ...]
    domains: tuple[str, ...]
    labels: tuple[str, ...]
    sentences: tuple[str, ...]
    long_text: str


def draw_pools(seed: int) -> Pools:
    """Everything faker contributes, drawn in a fixed order from a seeded instance."""
    fake = Faker(["en_US", "es_ES", "ja_JP", "de_DE", "pt_BR"])
    fake.seed_instance(seed)
    rng = random.Random(f"{seed}:pools")
    first = sorted({fake.first_name() for _ in range(600)})
    last = sorted({fake.last_name() for _ in range(600)})
    words = sorted({word.capitalize() for word in fake["en_US"].words(nb=3000)})
    countries = sorted({fake["en_US"].country_code() for _ in range(300)})
    domains = [*sorted({fake["en_US"].free_email_domain() for _ in range(50)}), "orininu.example"]
    labels = sorted({f"{fake['en_US'].last_name()} {rng.choice(LABEL_SUFFIXES)}" for _ in range(150)})
    sentences = tuple(fake["en_US"].sentence(nb_words=10) for _ in range(400))
    long_text = " ".join(fake["en_US"].paragraph(nb_sentences=8) for _ in range(40))
    return Pools(
        first_names=tuple(first),
        last_names=tuple(last),
        words=tuple(words),
        countries=tuple(countries),
        domains=tuple(domains),
        labels=tuple(labels),
        sentences=sentences,
        long_text=long_text,
    )
