"""lora-serve under a realistic load: continuous vs static batching across 8 adapters, from a real client.

    python benchmarks/serving_load.py                 # the full run (~45 min on 2 cores)
    python benchmarks/serving_load.py --reduced       # fewer, shorter requests, one repeat (a shared machine)

What it does, all on 127.0.0.1:
1. builds the 100M-parameter GPT-J shape of benchmarks/throughput.py, trains one LoRA adapter on it for one step
   (lora-train, NF4 base) and derives 8 adapters from it with distinct random non-zero weights (so every adapter
   changes the output), written as complete adapter folders;
2. starts two real `lora-serve` processes on that base, `scheduler=static` and `scheduler=continuous`;
3. measures the static server's saturation rate (a burst of requests, all at once: requests/s), then makes a
   fixed-seed workload: Poisson arrivals at 1.5x that rate, prompt lengths 20-400 tokens and max_tokens 5-128
   (both long-tailed), greedy and sampled mixed, over 8 adapters;
4. sends it with the official `openai` async client, every request streamed, and reports output tokens/s,
   requests/s, time to first token and inter-token latency (p50/p99) for: continuous, static (alternating,
   `--repeats` times each), the same workload with one adapter for every request, one request at a time, and the
   same requests sent all at once to each scheduler (capacity: what each gives when it is the bottleneck);
5. checks 24 greedy answers (3 per adapter) against one `lora-generate prompt_file=... stream=false` run over the
   8 adapters, counts every response (none lost, none twice) and the continuous server's resident memory growth
   against the KV budget's bytes.
Prints a markdown table; `--out` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHAPE = dict(n_embd=768, n_layer=14, n_head=12, rotary_dim=32)  # benchmarks/throughput.py's "100m"
ADAPTERS = [f"a{i}" for i in range(8)]
CHECK_TOKENS = 24  # max_tokens of the greedy requests checked against lora-generate
FULL = dict(requests=120, calibration=32, single_at_a_time=40, prompt=(20, 400), max_tokens=(5, 128), repeats=3,
            checks=3)
REDUCED = dict(requests=48, calibration=16, single_at_a_time=10, prompt=(20, 200), max_tokens=(5, 48), repeats=1,
               checks=1)


def bin_path(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ model and adapters
def make_adapters(root: Path) -> Path:
    """8 adapter folders on the 100M NF4 base: one trained for a step by lora-train, 7 more with its layout."""
    import torch
    from safetensors.torch import load_file, save_file

    from lora_train.tiny import TinySpec, tiny_gptj_path

    base = tiny_gptj_path(TinySpec(**SHAPE))
    adapters = root / "adapters"
    proc = subprocess.run([bin_path("lora-train"), f"model.name_or_path={base}", "model.name=gptj-100m",
                           "experiment=debug", "train.max_steps=1", "data.max_rows=16", "data.max_length=64",
                           f"adapters_dir={adapters}", "run_name=a0"], capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        sys.exit(f"lora-train failed:\n{proc.stderr[-3000:]}")
    weights = adapters / "a0" / "adapter_model.safetensors"
    tensors = load_file(weights)
    for i, name in enumerate(ADAPTERS):
        folder = adapters / name
        if name != "a0":
            subprocess.run(["cp", "-r", str(adapters / "a0"), str(folder)], check=True)
        gen = torch.Generator().manual_seed(1000 + i)
        save_file({k: torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.dtype) * 0.05
                   for k, v in tensors.items()}, folder / "adapter_model.safetensors")
    return adapters


def start_server(adapters: Path, scheduler: str, root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(root / f"serve-{scheduler}.log", "w")
    proc = subprocess.Popen([bin_path("lora-serve"), f"adapters_dir={adapters}", f"port={port}",
                             f"scheduler={scheduler}", "max_batch_size=16", "max_tokens_limit=256",
                             "log_level=warning"], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    sys.exit(f"lora-serve ({scheduler}) did not start:\n{(root / f'serve-{scheduler}.log').read_text()[-3000:]}")


# ------------------------------------------------------------------------------------------------------ the workload
def make_workload(n: int, cfg: dict, rate: float, seed: int, tokenizer) -> list[dict]:
    """Fixed-seed requests: Poisson arrival times, long-tailed prompt and output lengths, greedy and sampled mixed;
    the first `checks` x 8 are greedy with CHECK_TOKENS tokens, one adapter each in turn (checked later)."""
    from lora_train.tiny import sample_path

    rng = random.Random(seed)
    words = " ".join(json.loads(line)["response"] for line in open(sample_path(), encoding="utf-8")).split()
    lo, hi = cfg["prompt"]
    mlo, mhi = cfg["max_tokens"]
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        target = int(min(hi, max(lo, rng.lognormvariate(math.log(lo * 3), 0.8))))
        start = rng.randrange(len(words) - 600)
        prompt, k = "", 8
        while True:  # grow the prompt (one line, no newline) until it has about `target` tokens
            prompt = " ".join(words[start:start + k]).replace("\n", " ")
            if len(tokenizer(prompt)["input_ids"]) >= target or k > 1500:
                break
            k += max(1, k // 4)
        checked = i < cfg["checks"] * len(ADAPTERS)
        out.append({"id": i, "at": t, "adapter": ADAPTERS[i % len(ADAPTERS)], "prompt": prompt,
                    "max_tokens": CHECK_TOKENS if checked else int(min(mhi, max(mlo, rng.paretovariate(1.2) * mlo))),
                    "temperature": 0.0 if checked or rng.random() < 0.5 else 0.8,
                    "seed": rng.randrange(2**31), "checked": checked})
    return out


async def send(client, req: dict, model: str, t0: float) -> dict:
    """One streamed request at its arrival time; what the client saw."""
    await asyncio.sleep(max(0.0, t0 + req["at"] - time.perf_counter()))
    sent = time.perf_counter()
    stamps, text, usage, finish = [], [], None, None
    stream = await client.completions.create(model=model, prompt=req["prompt"] + "\n", max_tokens=req["max_tokens"],
                                             temperature=req["temperature"], seed=req["seed"], stream=True,
                                             stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for c in chunk.choices:
            if c.text:
                stamps.append(time.perf_counter())
                text.append(c.text)
            finish = c.finish_reason or finish
    return {"id": req["id"], "sent": sent, "stamps": stamps, "done": time.perf_counter(), "text": "".join(text),
            "tokens": usage, "finish": finish}


async def run_arm(url: str, workload: list[dict], one_adapter: str | None = None, sequential: bool = False) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=1800)
    t0 = time.perf_counter()
    if sequential:
        results = []
        for req in workload:
            results.append(await send(client, req | {"at": 0.0}, one_adapter or req["adapter"], time.perf_counter()))
    else:
        results = await asyncio.gather(*(send(client, r, one_adapter or r["adapter"], t0) for r in workload))
    await client.close()
    return summarize(results, workload, t0)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def summarize(results: list[dict], workload: list[dict], t0: float) -> dict:
    ids = [r["id"] for r in results]
    assert sorted(ids) == sorted(w["id"] for w in workload), "a request was lost or answered twice"
    assert all(r["finish"] in ("stop", "length") and r["tokens"] is not None for r in results), "unfinished answers"
    span = max(r["done"] for r in results) - min(r["sent"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["stamps"][0] - r["sent"] for r in results if r["stamps"]]
    itl = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:])]
    return {"tok_s": tokens / span, "req_s": len(results) / span, "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
            "itl_p50": pct(itl, 0.5), "itl_p99": pct(itl, 0.99), "tokens": tokens, "requests": len(results),
            "texts": {r["id"]: r["text"] for r in results}}


# ------------------------------------------------------------------------------------------------------------ checks
def check_against_lora_generate(adapters: Path, workload: list[dict], texts: dict, root: Path) -> int:
    """The checked greedy answers must equal one lora-generate run over all 8 adapters (stream=false)."""
    checked = [w for w in workload if w["checked"]]
    prompts = root / "prompts.txt"
    prompts.write_text("".join(w["prompt"] + "\n" for w in checked))
    out = root / "generate.jsonl"
    proc = subprocess.run([bin_path("lora-generate"), f"adapters_dir={adapters}", f"adapters=[{','.join(ADAPTERS)}]",
                           f"prompt_file={prompts}", "stream=false", "batch_size=16",
                           f"sampling.max_new_tokens={CHECK_TOKENS}", f"output={out}", "overwrite=true"],
                          capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        sys.exit(f"lora-generate failed:\n{proc.stderr[-3000:]}")
    want = {(r["prompt"], r["adapter"]): r["completion"] for r in map(json.loads, out.read_text().splitlines())}
    bad = [w["id"] for w in checked if texts[w["id"]] != want[(w["prompt"], w["adapter"])]]
    if bad:
        sys.exit(f"greedy answers differ from lora-generate for requests {bad}")
    distinct = {want[(checked[0]["prompt"], a)] for a in ADAPTERS}
    print(f"  {len(checked)} greedy answers equal lora-generate's; {len(distinct)} distinct answers to one prompt "
          f"over the 8 adapters", flush=True)
    return len(checked)


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


# -------------------------------------------------------------------------------------------------------------- main
def table(arms: dict[str, list[dict]]) -> str:
    def cell(runs, key, fmt):
        vals = [r[key] for r in runs]
        return fmt.format(statistics.median(vals)) + (f" ({fmt.format(min(vals))}-{fmt.format(max(vals))})"
                                                      if len(vals) > 1 else "")
    lines = ["| arm | runs | output tok/s | requests/s | TTFT p50 s | TTFT p99 s | ITL p50 s | ITL p99 s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in arms.items():
        lines.append(f"| {name} | {len(runs)} | {cell(runs, 'tok_s', '{:.1f}')} | {cell(runs, 'req_s', '{:.2f}')} | "
                     f"{cell(runs, 'ttft_p50', '{:.2f}')} | {cell(runs, 'ttft_p99', '{:.2f}')} | "
                     f"{cell(runs, 'itl_p50', '{:.3f}')} | {cell(runs, 'itl_p99', '{:.3f}')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="fewer, shorter requests and one repeat")
    ap.add_argument("--repeats", type=int, help="repeats of continuous vs static (default 3; 1 with --reduced)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    cfg = dict(REDUCED if args.reduced else FULL)
    cfg["repeats"] = args.repeats or cfg["repeats"]
    from transformers import AutoTokenizer

    from lora_train.tiny import TinySpec, tiny_gptj_path

    root = Path(tempfile.mkdtemp(prefix="serving-load-"))
    started = time.time()
    print(f"setting up in {root}", flush=True)
    adapters = make_adapters(root)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gptj_path(TinySpec(**SHAPE)))
    static, static_url = start_server(adapters, "static", root)
    continuous, cont_url = start_server(adapters, "continuous", root)
    try:
        burst = make_workload(cfg["calibration"], cfg, 1e9, args.seed + 1, tokenizer)  # all at once
        asyncio.run(run_arm(static_url, burst))  # warm-up
        saturation = asyncio.run(run_arm(static_url, burst))["req_s"]
        rate = 1.5 * saturation
        print(f"  static saturation {saturation:.2f} requests/s; arrivals at {rate:.2f}/s", flush=True)
        workload = make_workload(cfg["requests"], cfg, rate, args.seed, tokenizer)
        asyncio.run(run_arm(cont_url, burst))  # warm-up
        rss_warm = rss(continuous.pid)
        arms: dict[str, list[dict]] = {"continuous": [], "static": []}
        for r in range(cfg["repeats"]):
            for name, url in [("static", static_url), ("continuous", cont_url)]:
                arms[name].append(asyncio.run(run_arm(url, workload)))
                print(f"  repeat {r + 1}: {name:<10} {arms[name][-1]['tok_s']:.1f} tok/s, TTFT p99 "
                      f"{arms[name][-1]['ttft_p99']:.2f} s", flush=True)
        rss_growth = rss(continuous.pid) - rss_warm
        # Capacity: at 1.5x static saturation the continuous server is bounded by the offered load, so its tokens/s
        # can exceed static's by about the arrival ratio at most. The same requests sent all at once show what each
        # scheduler gives when it is the bottleneck.
        burst_all = [w | {"at": 0.0} for w in workload]
        for name, url in [("static", static_url), ("continuous", cont_url)]:
            arms[f"{name}, all at once"] = [asyncio.run(run_arm(url, burst_all))]
            print(f"  all at once: {name:<10} {arms[f'{name}, all at once'][0]['tok_s']:.1f} tok/s", flush=True)
        arms["continuous, one adapter"] = [asyncio.run(run_arm(cont_url, workload, one_adapter=ADAPTERS[0]))]
        arms["one request at a time"] = [asyncio.run(run_arm(cont_url, workload[:cfg["single_at_a_time"]],
                                                             sequential=True))]
        checked = check_against_lora_generate(adapters, workload, arms["continuous"][0]["texts"], root)
        for name, url in [("static", static_url)]:
            assert all(arms[name][0]["texts"][w["id"]] == arms["continuous"][0]["texts"][w["id"]]
                       for w in workload if w["checked"]), "static and continuous greedy answers differ"
    finally:
        for proc in (static, continuous):
            proc.terminate()
            proc.wait(120)
    kv_bytes = 16384 * SHAPE["n_layer"] * 2 * SHAPE["n_embd"] * 4  # default max_batch_tokens, float32 K and V
    c, s = arms["continuous"], arms["static"]
    ratios = [a["tok_s"] / b["tok_s"] for a, b in zip(c, s)]
    ttft_ratios = [a["ttft_p99"] / b["ttft_p99"] for a, b in zip(c, s)]
    single = arms["continuous, one adapter"][0]["tok_s"]
    capacity = arms["continuous, all at once"][0]["tok_s"] / arms["static, all at once"][0]["tok_s"]
    print()
    print(table(arms))
    print()
    print(f"- continuous / static output tok/s: {', '.join(f'{x:.2f}' for x in ratios)}; TTFT p99 continuous / "
          f"static: {', '.join(f'{x:.2f}' for x in ttft_ratios)}")
    print(f"- all requests at once, continuous / static output tok/s: {capacity:.2f}")
    print(f"- 8 adapters / one adapter output tok/s (continuous): {statistics.median(r['tok_s'] for r in c) / single:.2f}")
    print(f"- continuous server RSS growth after warm-up: {rss_growth / 2**20:.0f} MiB (KV budget "
          f"{kv_bytes / 2**20:.0f} MiB); {checked} greedy answers equal lora-generate's; every request answered once")
    print(f"- {cfg['requests']} requests per arm, arrivals at {rate:.2f}/s (1.5x static saturation "
          f"{saturation:.2f}/s); whole run {(time.time() - started) / 60:.1f} min")
    if args.out:
        for runs in arms.values():
            for r in runs:
                r.pop("texts", None)
        args.out.write_text(json.dumps({"arms": arms, "ratios": ratios, "ttft_ratios": ttft_ratios,
                                        "capacity_ratio": capacity, "rate": rate, "saturation": saturation,
                                        "rss_growth": rss_growth}, indent=1))


if __name__ == "__main__":
    main()
