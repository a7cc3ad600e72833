"""Peak memory of loading a GPT-J-shaped model of ~300M parameters in nf4 vs bf16 vs fp32.

    python benchmarks/load_memory.py            # builds the checkpoint once (float32 safetensors), then measures

Each load runs in a fresh process that imports the libraries, records its RSS, loads the model the way lora-train
does (lora_train.model.load_base), and reports:
  peak RSS       VmHWM, the kernel's high-water mark of resident memory (anonymous + file pages)
  peak anon      the largest anonymous RSS seen by a 2 ms sampler (memory the process allocated itself; safetensors'
                 memory-mapped file pages, which the kernel can drop at any time, are excluded)
  model          torch's view of the loaded parameters and buffers
and the same three numbers minus the RSS right before loading (what the load itself costs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

SPEC = dict(n_embd=1024, n_layer=24, n_head=16, rotary_dim=32)  # 304M parameters with the 1024-token vocabulary


def status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def child(mode: str, path: str) -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from lora_train.model import load_base
    from lora_train.schemas import DType, ModelConfig, QuantConfig, QuantMode

    peak_anon, stop = [status("RssAnon")], threading.Event()

    def sample():
        while not stop.is_set():
            peak_anon[0] = max(peak_anon[0], status("RssAnon"))
            time.sleep(0.002)

    before, before_anon = status("VmRSS"), status("RssAnon")
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    quant = QuantConfig(mode=QuantMode.nf4 if mode == "nf4" else QuantMode.none, compute_dtype=DType.bfloat16)
    dtype = {"nf4": DType.auto, "bf16": DType.bfloat16, "fp32": DType.float32}[mode]
    model = load_base(path, ModelConfig(name_or_path=path, dtype=dtype), quant)
    stop.set()
    t.join()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
    print("RESULT " + json.dumps({"mode": mode, "before": before, "peak_rss": status("VmHWM"), "peak_anon": peak_anon[0],
                                  "before_anon": before_anon, "model_bytes": nbytes}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="nf4,bf16,fp32")
    ap.add_argument("--child"), ap.add_argument("--path")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.path)

    from lora_train.tiny import TinySpec, tiny_gptj_path

    path = str(tiny_gptj_path(TinySpec(**SPEC)))
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    print(f"checkpoint: {path} ({size / 2**20:.0f} MiB of float32 safetensors), load {os.getloadavg()[0]:.2f}")
    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    rows = {}
    for mode in args.modes.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--path", path], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        rows[mode] = json.loads(line[7:])
    print("\n| load | peak RSS MiB | load's own peak RSS MiB | peak anon MiB | load's own peak anon MiB | model MiB |"
          "\n|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {mib(r['peak_rss'])} | {mib(r['peak_rss'] - r['before'])} | {mib(r['peak_anon'])} | "
              f"{mib(r['peak_anon'] - r['before_anon'])} | {mib(r['model_bytes'])} |")
    if "nf4" in rows and "bf16" in rows:
        n, b = rows["nf4"], rows["bf16"]
        print(f"\nnf4 / bf16: peak RSS {n['peak_rss'] / b['peak_rss']:.2f}x, load's own peak RSS "
              f"{(n['peak_rss'] - n['before']) / (b['peak_rss'] - b['before']):.2f}x, load's own peak anon "
              f"{(n['peak_anon'] - n['before_anon']) / (b['peak_anon'] - b['before_anon']):.2f}x")


if __name__ == "__main__":
    main()
