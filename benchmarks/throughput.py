"""Training throughput, side by side: the original pad-to-max approach, TRL SFTTrainer defaults, lora-train.

    python benchmarks/throughput.py --model tiny --examples 32 --max-length 1024
    python benchmarks/throughput.py --model 100m --examples 32 --max-length 1024 --eval-examples 16

Every contender trains one epoch on the same examples (same order seed, learning rate, batch, 4-bit NF4 base and
LoRA r=8 on q_proj/v_proj), each in its own process so that its peak memory is its own. Then one shared function
computes the eval loss of each trained adapter on the same held-out examples. Reported per contender: useful tokens
per second (tokens that carry a loss label, i.e. response tokens: padding and prompt excluded), wall time of the
epoch, peak RSS, eval loss and MFU (model FLOPs of the real, unpadded examples per second over this machine's
matmul peak, measured in the same run for float32 and bfloat16).

Contenders:
  original    the GPT4All-J training code's approach, reimplemented: every example padded to max length, no
              packing, no length grouping, transformers Trainer (its EOS-masking bug is not reproduced)
  trl         trl.SFTTrainer with SFTConfig's defaults (gradient checkpointing on, no packing, no padding-free,
              random order), given prompt/completion rows; precision set to the hardware's compute dtype
  lora-train  lora_train.training.train.run() as shipped (train=cpu_demo settings: packed without padding, gradient
              checkpointing off; the data as a JSONL file)

The data: GPT4All-J-style rows assembled from the bundled sample so that lengths spread like real instruction data
(log-normal, median a quarter of the max length); the harness prints the length distribution.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

MODELS = {  # GPT-J-shaped; "tiny" is the embedded default model
    "tiny": None,
    "100m": dict(n_embd=768, n_layer=14, n_head=12, rotary_dim=32),
}
CONTENDERS = ["original", "trl", "lora-train"]
LR, BATCH, SEED = 1e-3, 8, 42


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


def examples(rows, tokenizer, max_length):
    """lora-train's own tokenization (prompt + "\\n" + response + EOS, loss on the response): every contender
    trains on exactly these tokens."""
    from lora_train.data.build import DataReport, tokenize
    from lora_train.schemas import DataConfig

    return tokenize(rows, tokenizer, DataConfig(max_length=max_length), DataReport(source="bench", revision=None))


def load_base(path: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from lora_train.model import compute_dtype
    from lora_train.schemas import QuantConfig

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[compute_dtype(QuantConfig()).value]
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=dt)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=dt), dt


def lora():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def eval_loss(model, eval_examples, pad_id) -> float:
    """Mean NLL per response token over the held-out examples (one shared definition for every contender)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(eval_examples), BATCH):
            chunk = eval_examples[i:i + BATCH]
            T = max(len(e["input_ids"]) for e in chunk)
            ids = torch.tensor([e["input_ids"] + [pad_id] * (T - len(e["input_ids"])) for e in chunk])
            lab = torch.tensor([e["labels"] + [-100] * (T - len(e["labels"])) for e in chunk])
            att = torch.tensor([[1] * len(e["input_ids"]) + [0] * (T - len(e["input_ids"])) for e in chunk])
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
            tgt = lab[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total, count = total + nll.item(), count + int((tgt != -100).sum())
    return total / count


def peak_rss_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024


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


# -------------------------------------------------------------------------------------------------- the contenders
def run_original(path, train_ex, work):
    """Pad every example to max_length (the GPT4All-J code's approach), plain Trainer, random order."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    base, dt = load_base(path)
    model = get_peft_model(base, lora())
    max_len = work["max_length"]
    pad = work["pad_id"]

    def collate(batch):
        ids = torch.tensor([b["input_ids"] + [pad] * (max_len - len(b["input_ids"])) for b in batch])
        lab = torch.tensor([b["labels"] + [-100] * (max_len - len(b["labels"])) for b in batch])
        att = torch.tensor([[1] * len(b["input_ids"]) + [0] * (max_len - len(b["input_ids"])) for b in batch])
        return {"input_ids": ids, "labels": lab, "attention_mask": att}

    args = TrainingArguments(output_dir=work["dir"], per_device_train_batch_size=BATCH, learning_rate=LR,
                             num_train_epochs=1, lr_scheduler_type="cosine", seed=SEED, data_seed=SEED, use_cpu=True,
                             report_to="none", save_strategy="no", logging_steps=1000, remove_unused_columns=False,
                             bf16=dt == torch.bfloat16)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(train_ex), data_collator=collate)
    result = trainer.train()
    return model, result.metrics["train_runtime"]


def run_trl(path, train_ex, work, rows):
    """SFTTrainer with SFTConfig defaults; only what every contender shares is set (lr, epochs, seed, length)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    base, dt = load_base(path)
    # bf16 is TRL's default; on a CPU without native bf16 it would be emulated 10-100x slower, so every contender
    # computes in the hardware's dtype (--trl-bf16 keeps TRL's literal default).
    bf16 = True if work.get("trl_bf16") else dt == torch.bfloat16
    args = SFTConfig(output_dir=work["dir"], learning_rate=LR, num_train_epochs=1, lr_scheduler_type="cosine",
                     seed=SEED, data_seed=SEED, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000,
                     max_length=work["max_length"], per_device_train_batch_size=BATCH, bf16=bf16)
    data = Dataset.from_list([{"prompt": r["prompt"] + "\n", "completion": r["response"]} for r in rows])
    trainer = SFTTrainer(model=base, args=args, train_dataset=data, processing_class=work["tokenizer"],
                         peft_config=lora())
    result = trainer.train()
    return trainer.model, result.metrics["train_runtime"]


def run_lora_train(path, train_ex, work, rows):
    import torch
    from peft import PeftModel

    from lora_train import compose
    from lora_train.training.train import run

    data = Path(work["dir"]) / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"model.name_or_path={path}", "model.name=bench", "data=jsonl", f"data.source={data}",
                 f"data.max_length={work['max_length']}", "data.val_fraction=0", "train.epochs=1",
                 f"train.learning_rate={LR}", f"train.per_device_batch_size={BATCH}",
                 f"train.global_batch_size={BATCH}", "train.warmup_steps=0", "train.report_to=[]",
                 "train.logging_steps=1000", f"adapters_dir={work['dir']}/adapters", "run_name=bench", f"seed={SEED}"]
    overrides += work.get("lora_train_overrides", [])
    folder = run(compose("train", overrides))
    metrics = json.loads((folder / "metrics.json").read_text())
    base, _ = load_base(path)
    model = PeftModel.from_pretrained(base, folder)
    torch.manual_seed(0)
    return model, metrics["train_runtime_s"]


def child(args) -> None:
    """One contender in this process: train, evaluate, print one JSON line."""
    from transformers import AutoTokenizer

    work = json.loads(Path(args.child_work).read_text())
    tok = AutoTokenizer.from_pretrained(work["model"])
    work["tokenizer"] = tok
    rows = json.loads(Path(work["rows"]).read_text())
    train_ex = examples(rows["train"], tok, work["max_length"])
    eval_ex = examples(rows["eval"], tok, work["max_length"])
    work["dir"] = tempfile.mkdtemp(prefix=f"bench-{args.child}-")
    timing = time_training()
    fn = {"original": run_original, "trl": run_trl, "lora-train": run_lora_train}[args.child]
    model, seconds = (fn(work["model"], train_ex, work) if args.child == "original"
                      else fn(work["model"], train_ex, work, rows["train"]))
    peak = peak_rss_mib()  # training's peak (the eval below only reloads the same base)
    loss = eval_loss(model, eval_ex, tok.pad_token_id)
    print("RESULT " + json.dumps({"contender": args.child, "train_s": seconds, "cpu_s": timing["cpu_s"],
                                  "peak_rss_mib": peak, "eval_loss": loss}), flush=True)


def time_training() -> dict:
    """Record the CPU time (user + system, all threads) that Trainer.train() takes, the same way for every
    contender: on a shared machine it measures the work done, where wall time also measures the neighbours."""
    from transformers import Trainer

    timing, original = {}, Trainer.train

    def timed(self, *a, **k):
        t0 = os.times()
        try:
            return original(self, *a, **k)
        finally:
            t1 = os.times()
            timing["cpu_s"] = (t1.user - t0.user) + (t1.system - t0.system)

    Trainer.train = timed
    return timing


# ------------------------------------------------------------------------------------------------------ the parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--examples", type=int, default=128, help="training examples (one epoch)")
    ap.add_argument("--eval-examples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--trl-bf16", action="store_true", help="keep TRL's literal bf16 default even where emulated")
    ap.add_argument("--lora-train", nargs="*", default=[], help="extra lora-train overrides, e.g. train.packing=true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child"), ap.add_argument("--child-work")
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from lora_train.config import compose
    from lora_train.training.estimate import shape_of
    from lora_train.model import cpu_has_fast_bf16
    from lora_train.tiny import TinySpec, tiny_gptj_path

    path = str(tiny_gptj_path() if MODELS[args.model] is None else tiny_gptj_path(TinySpec(**MODELS[args.model])))
    tok = AutoTokenizer.from_pretrained(path)
    rows = make_rows(args.examples + args.eval_examples, args.max_length, tok, SEED)
    train_rows, eval_rows = rows[:args.examples], rows[args.examples:]
    ex = examples(train_rows, tok, args.max_length)
    lengths = sorted(len(e["input_ids"]) for e in ex)
    useful = sum(sum(1 for v in e["labels"] if v != -100) for e in ex)
    shape = shape_of(AutoConfig.from_pretrained(path), compose("train").lora)
    lin = 2 * (shape.linear_params + shape.head_params + shape.lora_params)
    model_flops = sum(2 * lin * n + 3 * 4 * shape.n_layer * shape.d_model * n * n for n in lengths)
    load = os.getloadavg()
    print(f"model {args.model}: {shape.total_params / 1e6:.1f}M parameters ({path})")
    print(f"data: {len(ex)} examples, lengths min {lengths[0]} median {lengths[len(lengths) // 2]} mean "
          f"{sum(lengths) / len(lengths):.0f} max {lengths[-1]} (max length {args.max_length}); "
          f"{useful} useful (response) tokens, {sum(lengths)} non-padding tokens")
    peaks = {dt: matmul_peak(dt) for dt in ("float32", "bfloat16")}
    print(f"matmul peak: float32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bfloat16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s "
          f"(native bf16: {cpu_has_fast_bf16()}), torch threads {torch.get_num_threads()}, load {load[0]:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rows.json").write_text(json.dumps({"train": train_rows, "eval": eval_rows}))
        work = {"model": path, "rows": str(Path(tmp) / "rows.json"), "max_length": args.max_length,
                "pad_id": tok.pad_token_id, "trl_bf16": args.trl_bf16, "lora_train_overrides": args.lora_train}
        (Path(tmp) / "work.json").write_text(json.dumps(work))
        results = []
        for name in args.contenders.split(","):
            t0 = time.time()
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--child-work", str(Path(tmp) / "work.json")],
                                  capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{name}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", file=sys.stderr)
                continue
            r = json.loads(line[7:])
            r["wall_s"] = time.time() - t0
            r["useful_tokens_per_s"] = useful / r["train_s"]
            r["useful_tokens_per_cpu_s"] = useful / r["cpu_s"]
            r["mfu_fp32"] = model_flops / r["train_s"] / peaks["float32"]
            r["mfu_bf16"] = model_flops / r["train_s"] / peaks["bfloat16"]
            results.append(r)
            print(f"  {name:<11} done in {r['wall_s']:.0f} s", flush=True)
    base = {r["contender"]: r for r in results}
    print("\n| contender | useful tok/s | epoch s | CPU s (tok per CPU s) | peak RSS MiB | eval loss | MFU vs fp32 peak | "
          "MFU vs bf16 peak | speed vs original | speed vs trl |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        vs = lambda k: f"{r['useful_tokens_per_s'] / base[k]['useful_tokens_per_s']:.2f}x" if k in base else "-"  # noqa
        print(f"| {r['contender']} | {r['useful_tokens_per_s']:.0f} | {r['train_s']:.1f} | {r['cpu_s']:.1f} "
              f"({r['useful_tokens_per_cpu_s']:.0f}) | {r['peak_rss_mib']:.0f} | "
              f"{r['eval_loss']:.4f} | {100 * r['mfu_fp32']:.1f}% | {100 * r['mfu_bf16']:.1f}% | {vs('original')} | "
              f"{vs('trl')} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "peaks": peaks, "useful_tokens": useful,
                                               "model_flops": model_flops, "load": load, "results": results}, indent=1))


if __name__ == "__main__":
    main()
