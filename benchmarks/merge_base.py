"""Which base should an adapter trained on a 4-bit base be merged into? Trains adapters on the embedded default
(tiny GPT-J in NF4, bundled sample), merges each with merge.base=original and merge.base=dequantized, and prints
the verification numbers of both against the adapter on its 4-bit training base.

    python benchmarks/merge_base.py [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lora_train import compose, merge, train

ADAPTERS = {  # name -> lora-train overrides: the embedded default, and the same with LoRA on every linear layer
    "qv-r8": ["train.report_to=[]"],
    "all-linear-r8": ["train.report_to=[]", "lora=all_linear"],
}
COLUMNS = ["max_abs_logit_diff", "mean_abs_logit_diff", "mean_kl", "top1_agreement", "eval_loss_adapter",
           "eval_loss_merged"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None)
    work = Path(ap.parse_args().work or tempfile.mkdtemp(prefix="merge-base-"))
    print("| adapter | merge.base | " + " | ".join(COLUMNS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for name, overrides in ADAPTERS.items():
        folder = work / "adapters" / name
        if not (folder / "adapter_config.json").exists():
            train(compose("train", [f"adapters_dir={work / 'adapters'}", f"run_name={name}", *overrides]))
        for base in ("dequantized", "original"):
            out = merge(compose("merge", [f"adapter={folder}", f"output={work / 'merged' / f'{name}-{base}'}",
                                          f"merge.base={base}", "merge.force=true", "merge.verify_examples=64",
                                          "overwrite=true"]))
            v = json.loads((out / "merge_report.json").read_text())["verification"]
            print(f"| {name} | {base} | " + " | ".join(f"{v[c]:.6f}" if c.startswith("eval") else f"{v[c]:.3g}" for c in COLUMNS) + " |", flush=True)
    print(f"(verification examples per merge: {v['examples']}, positions: {v['positions']}, from {v['source']})")


if __name__ == "__main__":
    main()
