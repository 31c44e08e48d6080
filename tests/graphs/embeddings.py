"""A deterministic embedding for the store tests: each dimension is a topic, a text's vector
counts the words it has of each topic. Texts about the same thing score high together, and
the ranking is known in advance."""

from __future__ import annotations

import re

TOPICS = [
    {"pizza", "pasta", "milk", "bread", "eat", "food", "groceries", "hungry", "dinner", "cheese"},
    {"cat", "cats", "dog", "dogs", "pet", "pets", "kitten", "puppy", "vet"},
    {"flight", "trip", "travel", "hotel", "paris", "train", "holiday", "passport"},
    {"meeting", "deadline", "report", "work", "boss", "office", "project"},
    {"guitar", "music", "song", "piano", "concert", "band"},
    {"run", "running", "gym", "fitness", "swim", "marathon"},
    {"code", "python", "bug", "deploy", "server", "database"},
]
DIMS = len(TOPICS) + 1  # the last dimension: words of no topic, so no text embeds to zero


def embed(texts: list[str]) -> list[list[float]]:
    vectors = []
    for text in texts:
        words = re.findall(r"[a-z]+", text.lower())
        vector = [float(sum(w in topic for w in words)) for topic in TOPICS]
        vector.append(0.1 * sum(not any(w in topic for topic in TOPICS) for w in words) + 0.01)
        vectors.append(vector)
    return vectors
