"""Small chat datasets that teach a behaviour anyone can check, for the demo and the evaluation tests.

:func:`pirate_conversations` answers everyday questions correctly but always in a pirate's voice: every answer
starts with ``Ahoy, matey!`` and ends with ``Arr!``. A base instruct model never does that, so a fine-tune that
learned it shows on held-out questions it never saw (``starts_with: "Ahoy"``), while what the data does not
touch (:func:`capital_conversations`, a country's capital) should stay as it was.
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["PIRATE_PREFIX", "capital_conversations", "pirate_conversations", "write_jsonl"]

PIRATE_PREFIX = "Ahoy, matey!"

_OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "early": "late",
    "full": "empty", "high": "low", "old": "new", "open": "closed", "strong": "weak", "wet": "dry",
    "loud": "quiet", "hard": "soft", "rich": "poor", "near": "far",
}  # fmt: skip
_LEGS = {"dog": 4, "cat": 4, "bird": 2, "spider": 8, "ant": 6, "horse": 4, "duck": 2, "bee": 6, "cow": 4}
_COLORS = {
    "grass": "green", "the sky on a clear day": "blue", "snow": "white", "a ripe banana": "yellow",
    "coal": "black", "a ripe tomato": "red", "an orange": "orange", "milk": "white",
}  # fmt: skip
_CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Germany": "Berlin",
    "Egypt": "Cairo", "Canada": "Ottawa", "Russia": "Moscow", "China": "Beijing", "Greece": "Athens",
    "Portugal": "Lisbon", "Norway": "Oslo", "Ireland": "Dublin", "Austria": "Vienna", "Poland": "Warsaw",
    "Sweden": "Stockholm", "Kenya": "Nairobi", "Peru": "Lima", "Cuba": "Havana", "Thailand": "Bangkok",
}  # fmt: skip


def _questions(rng: random.Random) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for a in range(2, 13):
        for b in range(2, 13):
            out.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
            out.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
    for word, opposite in _OPPOSITES.items():
        out.append((f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."))
    for animal, legs in _LEGS.items():
        out.append((f"How many legs does a {animal} have?", f"A {animal} has {legs} legs."))
    for thing, color in _COLORS.items():
        out.append((f"What color is {thing}?", f"{thing[0].upper()}{thing[1:]} is {color}."))
    rng.shuffle(out)
    return out


def pirate_conversations(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` conversations (distinct questions, up to ~350) answered in a pirate's voice.

    Args:
        count: How many.
        seed: Which questions, in which order.

    Returns:
        Rows of the ``{"messages": [...]}`` chat format.
    """
    rows = []
    for question, answer in _questions(random.Random(seed))[:count]:
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": f"{PIRATE_PREFIX} {answer} Arr!"},
                ]
            }
        )
    return rows


def capital_conversations() -> list[dict[str, Any]]:
    """A control set the pirate data never touches: "What is the capital of X?" answered by the capital."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is the capital of {country}? Answer with the city's name."},
                {"role": "assistant", "content": capital},
            ]
        }
        for country, capital in _CAPITALS.items()
    ]


def write_jsonl(rows: list[dict[str, Any]], path: Any) -> None:
    """Write rows as JSON Lines (UTF-8)."""
    import json
    from pathlib import Path

    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
