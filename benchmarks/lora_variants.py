"""Did a LoRA variant help on this base? Eval loss and step time of each variant against plain LoRA on the NF4 base
and LoRA on the full-precision base, over several seeds.

    python benchmarks/lora_variants.py              # 100 steps at length 256, 3 seeds (about 40 minutes on 2 cores)
    python benchmarks/lora_variants.py --reduced    # 8 steps at length 64, batch 4, 2 seeds, 30 pretraining
                                                    # steps, without gaussian and LoftQ x4 (a shared machine)

The base is the tiny GPT-J shape first trained in full precision on the bundled sample (`--pretrain-steps` AdamW
steps), so its weights carry structure and NF4 rounding costs something measurable (printed: the loss of the base in
float32 and in NF4 on the same text). Every contender then trains the same LoRA shape (r=8, alpha=16, every linear
layer) with lora-train itself, in float32 compute (this CPU has no native bf16), for the same steps on the same data
order per seed. The seed also draws the evaluation split, so eval losses are compared within a seed: a variant's gain
is plain NF4 LoRA's eval loss minus its own on the same seed. It counts as helping only where its mean gain exceeds
the spread (max - min) of its gains over the seeds (which also means it gained on every seed); "worse" is the same
test the other way round.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = {  # name -> lora-train overrides on top of the common ones
    "LoRA, full-precision base": ["quant=none"],
    "LoRA (NF4)": [],
    "gaussian init": ["lora.init=gaussian"],
    "LoftQ (1 round)": ["lora.init=loftq"],
    "LoftQ (4 rounds)": ["lora.init=loftq", "lora.loftq_iters=4"],
    "PiSSA": ["lora.init=pissa"],
    "OLoRA": ["lora.init=olora"],
    "rsLoRA": ["lora.use_rslora=true"],
    "DoRA": ["lora.use_dora=true"],
    "LoRA+ (ratio 16)": ["train.loraplus_lr_ratio=16"],
}
PLAIN = "LoRA (NF4)"


def pretrain(folder: Path, steps: int, length: int) -> None:
    """The tiny GPT-J, then full-precision causal-LM training on the bundled sample (prompt + newline + response)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_train.tiny import build

    build(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    texts = sample_texts(tok)
    ids = [tok(t, truncation=True, max_length=length)["input_ids"] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        batch = [ids[i] for i in torch.randint(len(ids), (8,), generator=gen).tolist()]
        width = max(map(len, batch))
        x = torch.tensor([b + [tok.pad_token_id] * (width - len(b)) for b in batch])
        mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
        labels = x.masked_fill(mask == 0, -100)
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            print(f"  pretrain step {step}: loss {loss.item():.3f}", flush=True)
    model.save_pretrained(folder)
    (folder / "pretrained.json").write_text(json.dumps({"steps": steps, "length": length}))  # done, not interrupted


def sample_texts(tok) -> list[str]:
    from lora_train.tiny import sample_path

    rows = [json.loads(line) for line in sample_path().read_text().splitlines() if line.strip()]
    return [f"{r['prompt']}\n{r['response']}{tok.eos_token}" for r in rows]


def base_losses(folder: Path, length: int) -> dict[str, float]:
    """Mean token loss of the base on the first 48 sample rows, in float32 and loaded in NF4 (what quantization
    costs)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tok = AutoTokenizer.from_pretrained(folder)
    texts = sample_texts(tok)[:48]
    out = {}
    for label, kw in (("float32", {}), ("nf4", {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)})):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()
        total = n = 0.0
        with torch.no_grad():
            for t in texts:
                x = torch.tensor([tok(t, truncation=True, max_length=length)["input_ids"]])
                total += model(input_ids=x, labels=x).loss.item() * (x.shape[1] - 1)
                n += x.shape[1] - 1
        out[label] = total / n
    return out


def run_one(folder: Path, work: Path, name: str, overrides: list[str], seed: int, steps: int, length: int,
            batch: int) -> dict:
    from lora_train import compose, train

    run_name = f"{''.join(c if c.isalnum() else '-' for c in name)}-s{seed}"
    common = [f"model.name_or_path={folder}", "model.name=bench-tiny", "model.dtype=float32",
              "quant.compute_dtype=float32", "lora.r=8", "lora.alpha=16", "lora.target_modules=[all-linear]",
              f"data.max_length={length}", f"train.max_steps={steps}", f"train.eval_steps={steps + 1}",
              f"train.per_device_batch_size={batch}", f"train.global_batch_size={batch}",
              "train.learning_rate=1e-3", "train.warmup_steps=5", "train.logging_steps=10", "train.report_to=[]",
              f"seed={seed}", f"adapters_dir={work}", f"run_name={run_name}", "overwrite=true"]
    started = time.time()
    out = train(compose("train", common + overrides))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"contender": name, "seed": seed, "eval_loss": metrics["eval_loss"],
            "step_s": metrics["train_runtime_s"] / max(1, metrics["global_step"]), "wall_s": time.time() - started}


def table(results: list[dict], plain: str = PLAIN) -> list[str]:
    by = {}
    for r in results:
        by.setdefault(r["contender"], {})[r["seed"]] = r
    base = by[plain]
    lines = ["| contender | eval loss, mean (min - max) | gain vs LoRA (NF4), mean (min - max) over seeds | "
             "step time, s (median) | step time vs LoRA (NF4) | helps here? |", "| --- | --- | --- | --- | --- | --- |"]
    plain_step = statistics.median(r["step_s"] for r in base.values())  # one slow neighbour moves no median
    for name, runs in by.items():
        losses = [r["eval_loss"] for r in runs.values()]
        gains = [base[s]["eval_loss"] - r["eval_loss"] for s, r in runs.items() if s in base]
        gain = statistics.mean(gains) if gains else math.nan
        spread = max(gains) - min(gains) if gains else math.nan
        step = statistics.median(r["step_s"] for r in runs.values())
        verdict = "-" if name == plain else ("yes" if gain > spread else ("worse" if -gain > spread else "no"))
        if name != plain and len(gains) < 2:
            verdict = f"cannot tell ({len(gains)} paired seed)"
        lines.append(f"| {name} | {statistics.mean(losses):.4f} ({min(losses):.4f} - {max(losses):.4f}) | "
                     f"{gain:+.4f} ({min(gains, default=math.nan):+.4f} - {max(gains, default=math.nan):+.4f}) | "
                     f"{step:.3f} | {step / plain_step:.2f}x | {verdict} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true",
                    help="8 steps at length 64, batch 4, 2 seeds, 30 pretraining steps, 8 contenders")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="examples per optimizer step")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--only", nargs="*", help="contender names to run (default: all)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lora_variants",
                    help="where the pretrained base, the adapters and results.json go")
    ap.add_argument("--table", type=Path, help="only print the table of a results.json written earlier")
    args = ap.parse_args(argv)
    if args.table:
        report = json.loads(args.table.read_text())
        print("\n".join(table(report["results"])))
        return 0
    if args.reduced:
        args.steps, args.length, args.seeds, args.batch, args.pretrain_steps = 8, 64, 2, 4, 30
        args.only = args.only or [n for n in CONTENDERS if n not in ("gaussian init", "LoftQ (4 rounds)")]
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.work / f"pretrained-{args.pretrain_steps}-{args.length}"
    started = time.time()
    if not (folder / "pretrained.json").is_file():
        print(f"pretraining the tiny GPT-J in float32 ({args.pretrain_steps} steps)...", flush=True)
        pretrain(folder, args.pretrain_steps, args.length)
    costs = base_losses(folder, args.length)
    print(f"base loss on the sample: float32 {costs['float32']:.4f}, nf4 {costs['nf4']:.4f} "
          f"(NF4 rounding costs {costs['nf4'] - costs['float32']:+.4f})", flush=True)
    names = args.only or list(CONTENDERS)
    results = []
    for seed in range(args.seeds):  # every contender once per seed, back to back: they see the same neighbours
        for name in names:
            r = run_one(folder, args.work / "adapters", name, CONTENDERS[name], seed, args.steps, args.length,
                        args.batch)
            print(f"  {name} seed {seed}: eval loss {r['eval_loss']:.4f}, {r['step_s']:.3f} s/step", flush=True)
            results.append(r)
            report = {"args": {k: str(v) for k, v in vars(args).items()}, "base_loss": costs, "results": results,
                      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                      "minutes": (time.time() - started) / 60}
            (args.work / "results.json").write_text(json.dumps(report, indent=2))  # kept if a later run fails
    print("\n".join(table(results) if PLAIN in names else [json.dumps(results)]))
    print(f"\n{args.steps} steps at length {args.length}, {args.seeds} seeds, {report['minutes']:.1f} minutes")
    return 0 if all(math.isfinite(r["eval_loss"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
