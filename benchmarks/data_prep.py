"""Data preparation before the first training step: a first run (read, curate, tokenize, store in the cache) against
a second run on the same data (the tokenized examples reused), in one process.

    python benchmarks/data_prep.py                  # 50k GPT4All-J-style rows, v1.3-groovy, the tiny model's tokenizer
    python benchmarks/data_prep.py --rows 10000

The rows come from benchmarks/curation.py's generator (planted duplicates, refusals, "AI language model" rows), so
the first run pays for MinHash dedup as a real GPT4All-J run does. Timed: lora_train.data.build.build_datasets, what
`lora-train` calls before loading the model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--max-length", type=int, default=1024)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LORA_TRAIN_CACHE"] = os.environ.get("LORA_TRAIN_CACHE", tmp)
        from curation import generate

        from lora_train.data.build import build_datasets
        from lora_train.model import load_tokenizer, resolve_model
        from lora_train.schemas import Curation, DataConfig, ModelConfig

        rows, _, _ = generate(args.rows)
        path = Path(tmp) / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tokenizer = load_tokenizer(resolve_model(ModelConfig()), ModelConfig())
        cfg = DataConfig(source=str(path), curation=Curation["v1.3-groovy"], max_length=args.max_length)
        times, sizes = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            train, val, report = build_datasets(cfg, tokenizer, seed=42)
            times.append(time.perf_counter() - t0)
            sizes.append((len(train), len(val), report.cache.split()[0]))
        assert sizes[0][:2] == sizes[1][:2]
        print(f"{args.rows} rows ({path.stat().st_size / 2**20:.0f} MiB), {sizes[0][0]} train + {sizes[0][1]} eval "
              f"examples after v1.3-groovy, max length {args.max_length}, load {os.getloadavg()[0]:.2f}\n")
        print("| run | data preparation s | rows/s | vs first run |\n|---|---|---|---|")
        for name, t, (_, _, how) in zip(("first (cache empty)", "second (same data)"), times, sizes):
            print(f"| {name}: examples {how} | {t:.2f} | {args.rows / t:,.0f} | {times[0] / t:.1f}x |")


if __name__ == "__main__":
    main()
