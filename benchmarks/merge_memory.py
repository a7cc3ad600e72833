"""Peak memory and time of `lora-merge` on a GPT-J-shaped model of ~300M parameters, against the usual way
(PEFT: load the full base, merge_and_unload, save_pretrained), each in its own process.

    python benchmarks/merge_memory.py [--work DIR] [--layers 24] [--width 1024]

Prints a Markdown table: peak RSS of each process, wall time, the output size, and peak RSS / output size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import resource, sys, time
mode, adapter, out, *extra = sys.argv[1:]
t = time.time()
if mode == "imports":  # the floor: torch, transformers, peft and lora_train imported, nothing merged
    import peft, transformers, lora_train.merging.merge
elif mode == "peft":
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    import json
    base = json.load(open(f"{adapter}/adapter_config.json"))["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
else:
    from lora_train import compose, merge
    merge(compose("merge", [f"adapter={adapter}", f"output={out}", f"merge.base={mode}", "merge.verify=false", *extra]))
print("RESULT", time.time() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def make_adapter(work: Path, layers: int, width: int) -> tuple[Path, int]:
    import torch
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_train.adapters import base_summary
    from lora_train.schemas import ModelConfig, TrainJob
    from lora_train.tiny import TinySpec, build

    base = work / "base"
    if not (base / "config.json").exists():
        build(base, TinySpec(vocab_size=1024, n_embd=width, n_layer=layers, n_head=16, rotary_dim=64))
    model = AutoModelForCausalLM.from_pretrained(base)
    params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    adapter = work / "adapter"
    peft.save_pretrained(adapter)
    job = TrainJob(model=ModelConfig(name="bench", name_or_path=str(base)))
    (adapter / "lora_train.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(job)))
    (adapter / "base_model.json").write_text(json.dumps(base_summary(model.config)))
    return adapter, params


def measure(mode: str, adapter: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(adapter), str(out), *extra], capture_output=True,
                          text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    if proc.returncode or not line:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    _, seconds, rss = line[0].split()
    return float(seconds), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=1024)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="merge-bench-"))
    adapter, params = make_adapter(work, args.layers, args.width)
    print(f"GPT-J-shaped base: {params / 1e6:.0f}M parameters, float32, adapter r=8 on q_proj/v_proj")
    print("| method | wall time (s) | peak RSS (MiB) | output (MiB) | peak RSS / output |")
    print("| --- | --- | --- | --- | --- |")
    small = ["merge.max_shard_size=200MB"]
    runs = [("imports", [], "imports only (torch, transformers, peft, lora_train): the floor"),
            ("peft", [], "PEFT: load full base, merge_and_unload, save_pretrained"),
            ("original", [], "lora-merge merge.base=original (default 2GB shards: one shard here)"),
            ("original", small, "lora-merge merge.base=original merge.max_shard_size=200MB"),
            ("dequantized", small, "lora-merge merge.base=dequantized merge.max_shard_size=200MB")]
    size = None
    for i, (mode, extra, label) in enumerate(runs):
        out = work / f"out-{i}-{mode}"
        seconds, rss = measure(mode, adapter, out, extra)
        if mode != "imports":
            size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
        ratio = f"{rss / size:.2f}" if size else "-"
        print(f"| {label} | {seconds:.1f} | {rss:.0f} | {size or 0:.0f} | {ratio} |", flush=True)
    print(f"(this process, building the inputs: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
