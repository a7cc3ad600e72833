"""A task of our own with answers a program can check: questions about a short list of words.

    python benchmarks/list_task.py --write lora_train/data/files/lists.jsonl   (the bundled training rows)

Each prompt shows a list of 3-6 words and asks for the first, second, third or last word, or how many words there are;
the response is "Answer: <word or number>". A real instruct model answers some of these by itself (chatty, and often
miscounting positions), so the base scores above zero and an adapter has something to improve.

The checker scores content, not form: for a position question, the first word of the prompt's list that the response
mentions must be the right one; for a count, the first number in the response must be right. Whether the response
is in the trained form ("Answer: x", nothing else) is scored separately (`follows_format`).

Training rows use TRAIN_WORDS only and held-out rows HELD_OUT_WORDS only: no held-out prompt shares a list item with
any training row.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

TRAIN_WORDS = """apple river chair cloud tiger spoon candle garden window pencil bottle mirror carpet rocket violin button
jacket forest island ladder basket bridge castle dragon engine feather guitar hammer helmet kettle lemon magnet needle
orange parrot pillow planet pocket rabbit saddle shovel silver spider statue sugar tablet teapot ticket tomato tunnel
turtle wallet wagon whistle wizard zebra anchor barrel blanket camera cherry cotton desert dolphin eagle falcon
goblet harbor iceberg jungle kitten lantern meadow monkey napkin ocean onion oyster panda pepper piano pirate puzzle
quilt radio raven ribbon saucer scarf shadow shell sponge stove summer sunset thunder tiger towel trophy valley
velvet volcano walnut window winter yogurt acorn banjo beacon cactus canyon cobweb dagger denim""".split()
HELD_OUT_WORDS = """almond balloon bicycle biscuit blossom compass cookie crayon crystal cupcake diamond donkey elbow
fountain giraffe glacier gravel hamster hedgehog jelly kayak koala lagoon lobster mango marble mitten muffin
noodle orchard otter paddle peacock pebble penguin pickle pumpkin raisin sandal scooter seagull skateboard sloth
snail squirrel sweater tambourine tulip umbrella unicorn vanilla waffle walrus weasel yacht""".split()
TRAIN_WORDS = list(dict.fromkeys(TRAIN_WORDS))  # a word listed twice above is one word
assert not set(TRAIN_WORDS) & set(HELD_OUT_WORDS)

POSITIONS = {"first": 0, "second": 1, "third": 2, "last": -1}
ASK_POSITION = [
    "Here is a list: {items}. What is the {pos} word in the list?",
    "List: {items}. Which word comes {pos}?",
    "Look at these words: {items}. Tell me the {pos} one.",
]
ASK_COUNT = [
    "Here is a list: {items}. How many words are in the list?",
    "List: {items}. Count the words.",
    "Look at these words: {items}. How many are there?",
]


def make_row(rng: random.Random, words: list[str]) -> dict:
    items = rng.sample(words, rng.randint(3, 6))
    listed = ", ".join(items)
    if rng.random() < 0.2:
        prompt, answer, kind = rng.choice(ASK_COUNT).format(items=listed), str(len(items)), "count"
    else:
        pos = rng.choice(list(POSITIONS))
        prompt, answer, kind = rng.choice(ASK_POSITION).format(items=listed, pos=pos), items[POSITIONS[pos]], pos
    return {"prompt": prompt, "response": f"Answer: {answer}", "source": f"lists/{kind}", "items": items,
            "answer": answer}


def rows(n: int, seed: int, held_out: bool) -> list[dict]:
    rng = random.Random(seed)
    return [make_row(rng, HELD_OUT_WORDS if held_out else TRAIN_WORDS) for _ in range(n)]


NUMBER = re.compile(r"\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten)\b", re.I)
WORD_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def correct(response: str, row: dict) -> bool:
    """The content check: the first list item (or number) the response names is the right one."""
    text = response.lower()
    if row["source"].endswith("/count"):
        m = NUMBER.search(text)
        return bool(m) and WORD_NUMBERS.get(m.group(1), m.group(1)) == row["answer"]
    found = [(m.start(), w) for w in row["items"] if (m := re.search(rf"\b{re.escape(w)}\b", text))]
    return bool(found) and min(found)[1] == row["answer"]


def follows_format(response: str) -> bool:
    """The trained form: "Answer: x" and nothing else."""
    return re.fullmatch(r"Answer: [a-z0-9]+", response.strip()) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", type=Path, required=True, help="where to write the training rows (JSON lines)")
    ap.add_argument("--rows", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with open(a.write, "w", encoding="utf-8") as f:
        for r in rows(a.rows, a.seed, held_out=False):
            f.write(json.dumps({k: r[k] for k in ("prompt", "response", "source")}) + "\n")
    print(f"wrote {a.rows} rows to {a.write}")


if __name__ == "__main__":
    main()
