"""A synthetic task small models learn within a few hundred steps, for the throughput harness's quality check.

Each prompt names a word of a fixed cycle ("Count on from seven."); the response continues the cycle from that word
for a random number of words. Every response token but the first few is determined by the one before it, so a model
that learns anything ends far below the untrained base's loss (which sits near chance, ln(vocabulary size)), and two
training setups that learned the same thing end at the same loss.
"""

from __future__ import annotations

import random

CYCLE = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def make_rows(n: int, seed: int, min_words: int = 6, max_words: int = 40) -> list[dict]:
    """n rows in the GPT4All-J schema (prompt, response, source); lengths spread uniformly in words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start, count = rng.randrange(len(CYCLE)), rng.randint(min_words, max_words)
        words = [CYCLE[(start + i) % len(CYCLE)] for i in range(count)]
        rows.append({"prompt": f"Count on from {CYCLE[start]}.", "response": " ".join(words), "source": "bench"})
    return rows
