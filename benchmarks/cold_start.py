"""Where a cold first `lora-train` (the README's quickstart, empty caches) spends its time.

    python benchmarks/cold_start.py --repeats 3

Each repeat uses a fresh LORA_TRAIN_CACHE and HF_DATASETS_CACHE (nothing built, nothing tokenized) and a fresh
working folder, and measures:
  phases      a child process timing, in turn: importing the libraries a run imports, building the tiny GPT-J and its
              tokenizer, tokenizing the sample into the data cache, loading the 4-bit base
  run         the bare `lora-train`, timed from outside: start -> plan printed (everything before training),
              plan -> first step's record (the first step, with the Trainer's set-up), -> exit (the other steps,
              evaluation, saving)
The OS page cache stays warm (installed packages were read before): "cold" here means what lora-train caches.
Wall seconds depend on what else the machine runs, so CPU seconds (user + system, every thread) are recorded beside
them, with the load average at the start of each repeat. Prints a table of medians with min-max and writes the raw
numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = r"""
import json, time
def now():
    return time.perf_counter(), time.process_time()
t0 = now()
import lora_train.training.train, transformers, trl, peft, bitsandbytes, datasets  # what a run imports
t1 = now()
from lora_train.config import compose, typed
from lora_train.schemas import TrainJob
from lora_train.model import resolve_model, load_tokenizer, load_base
from lora_train.data.build import build_datasets
job = typed(compose("train", []), TrainJob)
path = resolve_model(job.model)
tok = load_tokenizer(path, job.model)
t2 = now()
build_datasets(job.data, tok, job.seed)
t3 = now()
load_base(path, job.model, job.quant)
t4 = now()
out = {}
for name, a, b in [("imports", t0, t1), ("tiny model + tokenizer build", t1, t2), ("data cache", t2, t3),
                   ("4-bit base load", t3, t4)]:
    out[name] = b[0] - a[0]
    out[name + " (CPU s)"] = b[1] - a[1]
print(json.dumps(out))
"""


def fresh_env(root: Path) -> dict:
    env = dict(os.environ)
    env["LORA_TRAIN_CACHE"] = str(root / "lora_train_cache")
    env["HF_DATASETS_CACHE"] = str(root / "hf_datasets")
    env.pop("XDG_CACHE_HOME", None)
    return env


def run_timed(root: Path) -> dict:
    """The bare `lora-train` with timestamps of its stdout lines."""
    work = root / "work"
    work.mkdir()
    exe = Path(sys.executable).with_name("lora-train")
    start = time.perf_counter()
    proc = subprocess.Popen([str(exe)], cwd=work, env=fresh_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    plan = first = None
    for line in proc.stdout:
        now = time.perf_counter() - start
        if line.startswith("output:") and plan is None:
            plan = now
        if line.startswith("step ") and first is None:
            first = now
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"lora-train failed:\n{err[-3000:]}")
    end = time.perf_counter() - start
    return {"total": end, "start -> plan": plan, "plan -> first step": first - plan, "first step -> exit": end - first,
            "total (CPU s)": usage.ru_utime + usage.ru_stime}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "cold_start.json"), help="the raw numbers")
    args = ap.parse_args()
    results = []
    for i in range(args.repeats):
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            phases = json.loads(subprocess.run([sys.executable, "-c", PHASES], env=fresh_env(Path(a)), check=True,
                                               capture_output=True, text=True).stdout.splitlines()[-1])
            run = run_timed(Path(b))
        results.append({"phases": phases, "run": run, "load average": load})
        print(f"repeat {i + 1} (load average {load:.1f}): run {run['total']:.1f} s, phases " +
              ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\n| measure | median (s) | min-max (s) |\n| --- | --- | --- |")
    for group in ("run", "phases"):
        for key in results[0][group]:
            vals = [r[group][key] for r in results]
            print(f"| {group}: {key} | {statistics.median(vals):.1f} | {min(vals):.1f}-{max(vals):.1f} |")


if __name__ == "__main__":
    main()
