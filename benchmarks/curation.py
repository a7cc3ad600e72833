"""Curation throughput and near-duplicate detection quality on a generated data set with planted bad rows.

    python benchmarks/curation.py                 # 100k rows; prints a Markdown table for BENCHMARKS.md
    python benchmarks/curation.py --rows 20000    # quicker

Generates GPT4All-J-style rows (Zipf-distributed pseudo-words; prompts of 5-25 words, responses of 40-200), plants
"AI language model" responses, refusals, exact duplicates and near duplicates (1 or 2 words replaced, case and
punctuation changed), then runs the v1.3-groovy chain end to end (read JSONL, parse, clean, breezy, jazzy, dedup)
and reports rows/s, plus the dedup step's precision and recall against the planted duplicates. Baseline in the same
run: the `datasketch` package (MinHash + MinHashLSH, same shingles, same 128 permutations) on a subset, if installed.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from lora_train.data.build import read_rows
from lora_train.data.dedup import NUM_PERM, Deduper, normalize
from lora_train.schemas import Curation, DataConfig, FilterStep


def generate(n: int, seed: int = 0) -> tuple[list[dict], set[int], set[int]]:
    """Rows, and the 1-based line numbers of planted exact and near duplicates."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]

    def words(k: int) -> list[str]:
        return rng.choices(vocab, weights, k=k)

    rows, exact, near = [], set(), set()
    while len(rows) < n:
        r = rng.random()
        if r < 0.01 and len(rows) > 100:  # exact duplicate of an earlier row
            rows.append(dict(rows[rng.randrange(len(rows))]))
            exact.add(len(rows))
        elif r < 0.08 and len(rows) > 100:  # near duplicate: 1-2 words replaced, case and punctuation changed
            src = rows[rng.randrange(len(rows))]
            resp = src["response"].split(" ")
            for _ in range(rng.randint(1, 2)):
                resp[rng.randrange(len(resp))] = rng.choice(vocab)
            prompt = src["prompt"].upper() if rng.random() < 0.5 else src["prompt"].rstrip("?") + "!"
            rows.append({"prompt": prompt, "response": " ".join(resp), "source": "near"})
            near.add(len(rows))
        elif r < 0.10:
            rows.append({"prompt": " ".join(words(10)) + "?", "source": "ai",
                         "response": "As an AI language model, I " + " ".join(words(30))})
        elif r < 0.12:
            rows.append({"prompt": " ".join(words(10)) + "?", "source": "refusal",
                         "response": "I'm sorry, but I cannot " + " ".join(words(8))})
        else:
            rows.append({"prompt": " ".join(words(rng.randint(5, 25))) + "?", "source": "gen",
                         "response": " ".join(words(rng.randint(40, 200))) + "."})
    return rows, exact, near


def datasketch_baseline(texts: list[str], threshold: float) -> float | None:
    """rows/s of datasketch's MinHash + MinHashLSH on the same word 3-gram shingles."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        return None
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    for i, t in enumerate(texts):
        w = normalize(t).split(" ")
        shingles = {" ".join(w[j:j + 3]) for j in range(max(1, len(w) - 2))}
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([s.encode() for s in shingles])
        if not lsh.query(m):
            lsh.insert(str(i), m)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--baseline-rows", type=int, default=10_000)
    args = ap.parse_args()
    rows, exact, near = generate(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results = []
        for label, cfg in [
            ("v1.3-groovy chain (read + clean + breezy + jazzy + dedup)", DataConfig(source=str(path),
                                                                                  curation=Curation["v1.3-groovy"])),
            ("v1.2-jazzy chain (no dedup)", DataConfig(source=str(path), curation=Curation["v1.2-jazzy"])),
            ("dedup alone, threshold 0.8", DataConfig(source=str(path), filters=[FilterStep.dedup])),
            ("dedup alone, threshold 0.7", DataConfig(source=str(path), filters=[FilterStep.dedup],
                                                      dedup_threshold=0.7)),
        ]:
            start = time.perf_counter()
            kept, report = read_rows(cfg)
            secs = time.perf_counter() - start
            line = {int(r["where"].rsplit(":", 1)[1]) for r in kept}
            row = {"run": label, "rows": len(rows), "seconds": round(secs, 1), "rows_per_s": round(len(rows) / secs)}
            if cfg.filters == [FilterStep.dedup]:
                flagged = set(range(1, len(rows) + 1)) - line
                planted = exact | near
                hit = flagged & planted
                row.update(precision=round(len(hit) / max(1, len(flagged)), 4),
                           recall_near=round(len(flagged & near) / len(near), 4),
                           recall_exact=round(len(flagged & exact) / len(exact), 4))
            results.append(row)
            print(json.dumps(row), flush=True)
    texts = [f"{r['prompt']}\n{r['response']}" for r in rows[: args.baseline_rows]]
    start = time.perf_counter()
    Deduper(0.8).check(texts, list(range(len(texts))))
    ours = len(texts) / (time.perf_counter() - start)
    theirs = datasketch_baseline(texts, 0.8)
    print(f"\nplanted: {len(exact)} exact, {len(near)} near duplicates in {len(rows)} rows\n")
    print("| run | rows | seconds | rows/s | dedup precision | recall (near) | recall (exact) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['run']} | {r['rows']} | {r['seconds']} | {r['rows_per_s']} | {r.get('precision', '-')} | "
              f"{r.get('recall_near', '-')} | {r.get('recall_exact', '-')} |")
    print(f"\ndedup on {len(texts)} rows: lora_train.data.dedup {ours:.0f} rows/s"
          + (f", datasketch MinHash+MinHashLSH {theirs:.0f} rows/s, ratio {ours / theirs:.1f}x" if theirs else
             " (datasketch not installed: no baseline)"))


if __name__ == "__main__":
    main()
