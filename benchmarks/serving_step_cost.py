"""What one forward costs the serving engine on this machine: a prompt read (prefill) and a decoding step, by rows.

    python benchmarks/serving_step_cost.py
    python benchmarks/serving_step_cost.py --profile   # where a decoding step's time goes, and NF4 dequantized once

--profile runs a 16-row decoding step under the PyTorch profiler and splits its CPU time into 4-bit dequantization
and matmuls (bitsandbytes' ops), other matmuls, attention, concatenation, and the rest (elementwise ops, Python);
then it times decoding steps with every 4-bit linear replaced by a float32 linear holding the weights bitsandbytes
dequantizes (lora_train.merging.verify.dequantized_in_float32), the same weights without the per-call dequantization.

The 100M-parameter GPT-J shape of benchmarks/serving_load.py in NF4 (float32 compute), median of 9 timed calls
after one warm-up. It explains the load benchmark: a forward has a large fixed cost on the CPU (bitsandbytes turns
the 4-bit weights back into float32 on every call), so a decoding step of 16 rows costs far less than 16 steps of one
row, and a step that also reads a joining prompt pays that fixed cost twice.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

# The load benchmark's model; importing it also keeps the Hub offline.
from serving_load import SHAPE

CONTEXT = 200  # cached tokens per row when a decoding step is timed


def median_s(fn, repeats: int = 9) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


CATEGORIES = [  # (name, substrings of the profiler's op names), first match wins
    ("4-bit dequantization and matmul (bitsandbytes)", ("bitsandbytes", "4bit", "dequant", "gemv")),
    ("other matmuls", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")),
    ("attention", ("scaled_dot_product", "attention", "softmax")),
    # DynamicCache grows each layer's keys and values by concatenation, copying the cache at every step (GPT-J's
    # rotary embedding concatenates too, on one token a row)
    ("concatenation (aten::cat)", ("aten::cat",)),
]


def profile_split(step) -> list[tuple[str, float]]:
    """Self CPU time of one `step()` by category, in ms (op names vary by version: printed in full too)."""
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    split = {name: 0.0 for name, _ in CATEGORIES}
    split["the rest (elementwise, Python, framework)"] = 0.0
    for e in events:
        name = next((n for n, keys in CATEGORIES if any(k in e.key for k in keys)),
                    "the rest (elementwise, Python, framework)")
        split[name] += e.self_cpu_time_total / 1000
    return list(split.items())


def decode_step(model, rows: int, gen):
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=torch.randint(100, 1000, (rows, CONTEXT), generator=gen), cache=cache, use_cache=True)
    step = torch.randint(100, 1000, (rows, 1), generator=gen)

    def decode():
        model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)  # back to CONTEXT tokens: every timed step sees the same cache
    return decode


def profile_main(model, gen) -> None:
    import torch

    from lora_train.merging.verify import dequantized_in_float32

    with torch.no_grad():
        split = profile_split(decode_step(model, 16, gen))
        total = sum(ms for _, ms in split)
        print(f"| decoding step, 16 rows x {CONTEXT} cached tokens, NF4 | self CPU ms | share |\n| --- | ---: | ---: |")
        for name, ms in split:
            print(f"| {name} | {ms:.0f} | {100 * ms / total:.0f}% |")
        nf4 = {rows: median_s(decode_step(model, rows, gen)) for rows in (1, 16)}
        dequantized_in_float32(model)  # the same weights, dequantized once
        once = {rows: median_s(decode_step(model, rows, gen)) for rows in (1, 16)}
    print("\n| decoding step | NF4, ms | dequantized once (float32), ms | NF4 / once |\n| --- | ---: | ---: | ---: |")
    for rows in (1, 16):
        print(f"| {rows} rows x {CONTEXT} cached tokens | {1000 * nf4[rows]:.0f} | {1000 * once[rows]:.0f} | "
              f"{nf4[rows] / once[rows]:.1f}x |")


def main() -> None:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="store_true", help="split a decoding step's time; NF4 against dequantized once")
    args = ap.parse_args()

    from lora_train.model import load_base
    from lora_train.schemas import DType, ModelConfig, QuantConfig
    from lora_train.tiny import TinySpec, tiny_gptj_path

    path = str(tiny_gptj_path(TinySpec(**SHAPE)))
    model = load_base(path, ModelConfig(name_or_path=path, dtype=DType.float32),
                      QuantConfig(compute_dtype=DType.float32)).eval()  # as lora-serve loads it
    gen = torch.Generator().manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    if args.profile:
        return profile_main(model, gen)
    print("| forward | ms (median of 9) |\n| --- | ---: |")
    with torch.no_grad():
        for length in (32, 128, 512):
            ids = torch.randint(100, 1000, (1, length), generator=gen)
            ms = 1000 * median_s(lambda: model(input_ids=ids, logits_to_keep=1))
            print(f"| prefill, 1 row x {length} tokens | {ms:.0f} |", flush=True)
        for rows in (1, 4, 16):
            print(f"| decoding step, {rows} rows x {CONTEXT} cached tokens | "
                  f"{1000 * median_s(decode_step(model, rows, gen)):.0f} |", flush=True)


if __name__ == "__main__":
    main()
