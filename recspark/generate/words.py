"""The vocabulary of the synthetic catalog: each topic (category) with its words, the facets
that cut across topics, generic filler words and title adjectives."""

from __future__ import annotations

TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Jazz", ("saxophone", "swing", "bebop", "trumpet", "improvisation", "club", "vinyl", "blues")),
    (
        "Science Fiction",
        ("starship", "galaxy", "android", "alien", "warp", "colony", "robot", "orbit"),
    ),
    ("Cooking", ("recipe", "kitchen", "spice", "bread", "pasta", "oven", "flavour", "sauce")),
    ("Hiking", ("trail", "mountain", "backpack", "summit", "forest", "boots", "campfire", "ridge")),
    (
        "Gaming",
        ("console", "quest", "level", "multiplayer", "controller", "arcade", "boss", "pixel"),
    ),
    (
        "Gardening",
        ("soil", "seeds", "roses", "compost", "greenhouse", "tulips", "pruning", "herbs"),
    ),
    (
        "Fitness",
        ("workout", "cardio", "muscle", "yoga", "running", "strength", "stretch", "protein"),
    ),
    (
        "Photography",
        ("camera", "lens", "aperture", "portrait", "landscape", "shutter", "tripod", "film"),
    ),
    (
        "History",
        ("empire", "medieval", "dynasty", "archive", "revolution", "castle", "ancient", "war"),
    ),
    ("Travel", ("passport", "island", "beach", "airport", "hotel", "journey", "city", "cruise")),
    (
        "Finance",
        ("stocks", "budget", "savings", "investment", "market", "dividend", "tax", "bonds"),
    ),
    ("Poetry", ("verse", "sonnet", "rhyme", "stanza", "metaphor", "lyric", "ballad", "haiku")),
)
# Facets cut across categories: what an item is like, beyond its topic.
FACETS: tuple[tuple[str, ...], ...] = (
    ("beginner", "basics", "introduction", "simple", "first", "easy"),
    ("advanced", "masterclass", "technique", "professional", "expert", "precision"),
    ("kids", "family", "children", "playful", "together", "fun"),
    ("budget", "affordable", "value", "thrifty", "bargain", "cheap"),
    ("luxury", "premium", "exclusive", "elegant", "signature", "gourmet"),
    ("retro", "vintage", "nostalgic", "heritage", "traditional", "timeless"),
)
GENERIC = (
    "classic",
    "new",
    "essential",
    "complete",
    "modern",
    "deluxe",
    "great",
    "little",
    "guide",
    "collection",
    "edition",
    "story",
    "series",
    "volume",
    "the",
    "best",
    "of",
    "for",
    "with",
    "and",
    "every",
    "day",
    "home",
    "life",
    "world",
)
ADJECTIVES = ("Ultimate", "Midnight", "Golden", "Silent", "Wild", "Hidden", "Bright", "Secret")
