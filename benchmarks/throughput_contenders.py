"""The contenders of benchmarks/throughput.py, each run in its own process (so its peak memory is its own):

    python benchmarks/throughput_contenders.py <contender> <work.json>

trains on the examples the work file names and prints one `RESULT {json}` line: training time (wall and CPU),
peak RSS and the eval loss of the trained adapter, computed by one shared function for every contender; then the
same for the quality setting when the work file holds one.

Contenders (same examples, order seed, learning rate, schedule, batch 8, NF4 + double-quant base, LoRA r=8 on
q_proj/v_proj, compute dtype = the hardware's):
  original    the GPT4All-J training code's approach, reimplemented: every example padded to max length, no
              packing, no length grouping, transformers Trainer (its EOS-masking bug is not reproduced)
  trl         trl.SFTTrainer with SFTConfig's defaults (activation checkpointing on, no packing, no padding-free,
              random order), given prompt/completion rows
  trl-fast    TRL tuned for speed: the same with activation checkpointing off. bf16 only where the hardware has it,
              as everywhere here; no padding_free, which isolates examples only through position ids that GPT-J's
              attention does not read without FlashAttention (so examples would attend to each other)
  lora-train  lora_train.training.train.run() as shipped (packed without padding, gradient checkpointing off; the
              data as a JSONL file)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

CONTENDERS = ["original", "trl", "trl-fast", "lora-train"]
BATCH, SEED = 8, 42


# ----------------------------------------------------------------------------------------------------- shared parts
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


# -------------------------------------------------------------------------------------------------- the contenders
def run_original(work, train_ex, rows):
    """Pad every example to max_length (the GPT4All-J code's approach), plain Trainer, random order."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    base, dt = load_base(work["model"])
    model = get_peft_model(base, lora())
    max_len, pad = work["max_length"], work["pad_id"]

    def collate(batch):
        ids = torch.tensor([b["input_ids"] + [pad] * (max_len - len(b["input_ids"])) for b in batch])
        lab = torch.tensor([b["labels"] + [-100] * (max_len - len(b["labels"])) for b in batch])
        att = torch.tensor([[1] * len(b["input_ids"]) + [0] * (max_len - len(b["input_ids"])) for b in batch])
        return {"input_ids": ids, "labels": lab, "attention_mask": att}

    args = TrainingArguments(output_dir=work["dir"], per_device_train_batch_size=BATCH, learning_rate=work["lr"],
                             num_train_epochs=work["epochs"], lr_scheduler_type="cosine", seed=SEED, data_seed=SEED,
                             use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000,
                             remove_unused_columns=False, bf16=dt == torch.bfloat16)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(train_ex), data_collator=collate)
    result = trainer.train()
    return model, result.metrics["train_runtime"]


def _no_activation_checkpointing() -> dict:
    """transformers renamed gradient_checkpointing to activation_checkpointing: turn off whichever this version has."""
    from trl import SFTConfig

    if "activation_checkpointing" in {f.name for f in dataclasses.fields(SFTConfig)}:
        return {"activation_checkpointing": False, "gradient_checkpointing": None}
    return {"gradient_checkpointing": False}


def run_trl(work, train_ex, rows, fast: bool = False):
    """SFTTrainer with SFTConfig defaults; only what every contender shares is set (lr, epochs, seed, length,
    schedule, batch). `fast`: activation checkpointing off as well."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    base, dt = load_base(work["model"])
    # bf16 is TRL's default; on a CPU without native bf16 it would be emulated 10-100x slower, so every contender
    # computes in the hardware's dtype (--trl-bf16 keeps TRL's literal default for the `trl` contender).
    bf16 = True if work.get("trl_bf16") and not fast else dt == torch.bfloat16
    args = SFTConfig(output_dir=work["dir"], learning_rate=work["lr"], num_train_epochs=work["epochs"],
                     lr_scheduler_type="cosine", seed=SEED, data_seed=SEED, use_cpu=True, report_to="none",
                     save_strategy="no", logging_steps=1000, max_length=work["max_length"],
                     per_device_train_batch_size=BATCH, bf16=bf16, **(_no_activation_checkpointing() if fast else {}))
    data = Dataset.from_list([{"prompt": r["prompt"] + "\n", "completion": r["response"]} for r in rows])
    trainer = SFTTrainer(model=base, args=args, train_dataset=data, processing_class=work["tokenizer"],
                         peft_config=lora())
    result = trainer.train()
    return trainer.model, result.metrics["train_runtime"]


def run_lora_train(work, train_ex, rows):
    import torch
    from peft import PeftModel

    from lora_train import compose
    from lora_train.training.train import run

    data = Path(work["dir"]) / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"model.name_or_path={work['model']}", "model.name=bench", "data=jsonl", f"data.source={data}",
                 f"data.max_length={work['max_length']}", "data.val_fraction=0", f"train.epochs={work['epochs']}",
                 f"train.learning_rate={work['lr']}", f"train.per_device_batch_size={BATCH}",
                 f"train.global_batch_size={BATCH}", "train.warmup_steps=0", "train.report_to=[]",
                 "train.logging_steps=1000", f"adapters_dir={work['dir']}/adapters", "run_name=bench", f"seed={SEED}"]
    overrides += work.get("lora_train_overrides", [])
    folder = run(compose("train", overrides))
    metrics = json.loads((folder / "metrics.json").read_text())
    base, _ = load_base(work["model"])
    model = PeftModel.from_pretrained(base, folder)
    torch.manual_seed(0)
    return model, metrics["train_runtime_s"]


RUNNERS = {"original": run_original, "trl": run_trl, "trl-fast": lambda w, e, r: run_trl(w, e, r, fast=True),
           "lora-train": run_lora_train}


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


def train_and_evaluate(name: str, work: dict, timing: dict) -> dict:
    """Train contender `name` on the work's rows; its training time, CPU time and eval loss."""
    import gc

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work["model"])
    work = dict(work, tokenizer=tok, dir=tempfile.mkdtemp(prefix=f"bench-{name}-"))
    rows = json.loads(Path(work["rows"]).read_text())
    train_ex = examples(rows["train"], tok, work["max_length"])
    model, seconds = RUNNERS[name](work, train_ex, rows["train"])
    out = {"train_s": seconds, "cpu_s": timing["cpu_s"]}
    out["eval_loss"] = eval_loss(model, examples(rows["eval"], tok, work["max_length"]), tok.pad_token_id)
    del model
    gc.collect()
    return out


def main(name: str, work_file: str) -> None:
    """One contender in this process: train and evaluate (the speed setting, then the quality setting when the work
    file has one: one process start for both), print one JSON line."""
    work = json.loads(Path(work_file).read_text())
    timing, result = time_training(), {}
    if work.get("speed"):
        result = train_and_evaluate(name, work["speed"], timing)
        result["peak_rss_mib"] = peak_rss_mib()  # the speed run's peak (its eval only reloads the same base)
    if work.get("quality"):
        result["quality"] = train_and_evaluate(name, work["quality"], timing)
    print("RESULT " + json.dumps({"contender": name, **result}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
