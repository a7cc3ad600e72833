"""Adapter-swap inference benchmark: what one base with many resident adapters buys.

    python benchmarks/adapter_serving.py [--tokens 16] [--out results.json]

Trains 4 tiny adapters (experiment=debug) on the embedded tiny GPT-J, then measures, in one run:
1. switching between resident adapters vs reloading the base + adapter for every switch;
2. cold adapter load (validate + PEFT load);
3. 16 greedy requests over 4 adapters: one mixed batch vs one adapter's requests at a time vs one request at a time;
4. a real lora-serve process: 32 concurrent openai clients over 4 adapters vs the same 32 requests sequentially;
5. tokens/s of adapter-on-base vs the merged model (unquantized base: merging into 4-bit weights would round).
Prints a markdown table of times and ratios.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from lora_train import compose, train
from lora_train.inference.generation import GenParams, GenRequest, format_prompt, generate
from lora_train.schemas.infer import ServeJob
from lora_train.inference.registry import MultiAdapterModel
from lora_train.schemas import QuantConfig, QuantMode

NAMES = ["ad0", "ad1", "ad2", "ad3"]
PROMPTS = ["Tell me a joke about cats", "What is the capital of France?", "Write a haiku about rain",
           "Explain photosynthesis briefly"]


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def requests(tokens, n=16):
    return [GenRequest(format_prompt(PROMPTS[i % 4]), NAMES[i % 4], GenParams(max_new_tokens=tokens))
            for i in range(n)]


def bench_library(adapters: Path, tokens: int) -> dict:
    from peft import PeftModel

    from lora_train.model import load_base, resolve_model

    r = {}
    host = MultiAdapterModel.from_config(ServeJob(adapters_dir=str(adapters)))
    for n in NAMES:
        host.load(n)
    one = lambda name: generate(host, [GenRequest(format_prompt(PROMPTS[0]), name, GenParams(max_new_tokens=tokens))])
    one(NAMES[0])  # warm-up
    r["switch_resident_s"] = timed(lambda: [one(n) for n in NAMES], 2) / len(NAMES)

    def reload_each():
        for n in NAMES:
            base = load_base(resolve_model(host.model_cfg), host.model_cfg, host.quant_cfg)
            model = PeftModel.from_pretrained(base, str(adapters / n)).eval()
            ids = host.tokenizer(format_prompt(PROMPTS[0]), return_tensors="pt", add_special_tokens=False)
            model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=host.tokenizer.pad_token_id)
    r["switch_reload_base_s"] = timed(reload_each) / len(NAMES)

    def cold():
        host.unload(NAMES[3])
        host.load(NAMES[3])
    r["cold_adapter_load_s"] = timed(cold, 3)

    reqs = requests(tokens)
    r["mixed_batch_16_s"] = timed(lambda: generate(host, reqs), 2)
    r["per_adapter_batches_16_s"] = timed(lambda: [generate(host, [q for q in reqs if q.adapter == n]) for n in NAMES], 2)
    r["one_at_a_time_16_s"] = timed(lambda: [generate(host, [q]) for q in reqs], 1)

    # adapter-on-base vs merged, on an unquantized base (what lora-merge produces)
    fp = MultiAdapterModel.from_config(ServeJob(adapters_dir=str(adapters), quant=QuantConfig(mode=QuantMode.none)))
    fp.load(NAMES[0])
    long = [GenRequest(format_prompt(PROMPTS[1]), NAMES[0], GenParams(max_new_tokens=4 * tokens))]
    r["fp32_adapter_on_base_s"] = timed(lambda: generate(fp, long), 2)
    merged = fp.model.merge_and_unload()  # the base now holds W + BA; generate it as a plain model
    fp.model = fp.base = merged
    fp._resident.clear()
    plain = [GenRequest(format_prompt(PROMPTS[1]), "base", GenParams(max_new_tokens=4 * tokens))]
    r["fp32_merged_s"] = timed(lambda: generate(fp, plain), 2)
    return r


def bench_server(adapters: Path, tokens: int) -> dict:
    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("lora-serve")
    proc = subprocess.Popen([str(exe), f"adapters_dir={adapters}", f"port={port}", "max_batch_size=32",
                             "batch_wait_ms=10", "log_level=warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        jobs = [(NAMES[i % 4], PROMPTS[(i // 4) % 4]) for i in range(32)]
        ask = lambda j: client.completions.create(model=j[0], prompt=j[1] + "\n", max_tokens=tokens, temperature=0)
        ask(jobs[0])  # warm-up
        seq = timed(lambda: [ask(j) for j in jobs])
        with cf.ThreadPoolExecutor(32) as pool:
            conc = timed(lambda: list(pool.map(ask, jobs)))
        health = json.loads(urllib.request.urlopen(url + "/health").read())
        return {"server_sequential_32_s": seq, "server_concurrent_32_s": conc,
                "server_largest_batch": health["largest_batch"]}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adapter-bench-"))
    for i, n in enumerate(NAMES):
        train(compose("train", ["experiment=debug", f"adapters_dir={work}", f"run_name={n}",
                                f"train.learning_rate={2e-3 * (i + 1)}"]))
    r = bench_library(work, args.tokens)
    r.update(bench_server(work, args.tokens))
    x = lambda a, b, what: f"{r[a] / r[b]:.2f}x {what}"
    rows = [
        ("switch adapter (resident), per request", "switch_resident_s", ""),
        ("switch by reloading base + adapter, per request", "switch_reload_base_s",
         x("switch_reload_base_s", "switch_resident_s", "the resident switch")),
        ("cold adapter load (validate + PEFT load)", "cold_adapter_load_s", ""),
        ("16 requests over 4 adapters, one mixed batch", "mixed_batch_16_s", ""),
        ("16 requests, one adapter's batch at a time", "per_adapter_batches_16_s",
         x("per_adapter_batches_16_s", "mixed_batch_16_s", "the mixed batch")),
        ("16 requests, one request at a time", "one_at_a_time_16_s",
         x("one_at_a_time_16_s", "mixed_batch_16_s", "the mixed batch")),
        ("server: 32 concurrent clients over 4 adapters", "server_concurrent_32_s", ""),
        ("server: the same 32 requests sequentially", "server_sequential_32_s",
         x("server_sequential_32_s", "server_concurrent_32_s", "concurrent")),
        ("fp32 base, merged adapter", "fp32_merged_s", ""),
        ("fp32 base, adapter on base", "fp32_adapter_on_base_s", x("fp32_adapter_on_base_s", "fp32_merged_s", "merged")),
    ]
    print(f"\n{args.tokens} new tokens per request ({4 * args.tokens} in the fp32 rows); "
          f"largest server batch {r['server_largest_batch']}\n")
    print("| measurement | seconds | ratio |\n| --- | --- | --- |")
    for name, key, ratio in rows:
        print(f"| {name} | {r[key]:.3f} | {ratio} |")
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
