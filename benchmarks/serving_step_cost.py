"""What one forward costs the serving engine on this machine: a prompt read (prefill) and a decoding step, by rows.

    python benchmarks/serving_step_cost.py

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


def main() -> None:
    import torch
    from transformers import DynamicCache

    from lora_train.model import load_base
    from lora_train.schemas import DType, ModelConfig, QuantConfig
    from lora_train.tiny import TinySpec, tiny_gptj_path

    path = str(tiny_gptj_path(TinySpec(**SHAPE)))
    model = load_base(path, ModelConfig(name_or_path=path, dtype=DType.float32),
                      QuantConfig(compute_dtype=DType.float32)).eval()  # as lora-serve loads it
    gen = torch.Generator().manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print("| forward | ms (median of 9) |\n| --- | ---: |")
    with torch.no_grad():
        for length in (32, 128, 512):
            ids = torch.randint(100, 1000, (1, length), generator=gen)
            ms = 1000 * median_s(lambda: model(input_ids=ids, logits_to_keep=1))
            print(f"| prefill, 1 row x {length} tokens | {ms:.0f} |", flush=True)
        for rows in (1, 4, 16):
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.randint(100, 1000, (rows, CONTEXT), generator=gen), cache=cache, use_cache=True)
            step = torch.randint(100, 1000, (rows, 1), generator=gen)

            def decode():
                model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
                cache.crop(-1)  # back to CONTEXT tokens: every timed step sees the same cache

            print(f"| decoding step, {rows} rows x {CONTEXT} cached tokens | {1000 * median_s(decode):.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
