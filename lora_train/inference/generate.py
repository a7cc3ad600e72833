"""`lora-generate`: completions from one base and any number of adapters, side by side, streamed to the terminal.

    lora-generate adapters=[my-run] prompt="Write a haiku about autumn"
    lora-generate adapters=[run-a,run-b,base] prompt_file=prompts.txt stream=false output=out.jsonl
    lora-generate adapters=[my-run] interactive=true

Each adapter reads prompts in the format it was trained with: its lora_train.yaml's data.template (format=gpt4all
or format=raw override it). `base` (or the base model's name) in `adapters` means the base without any adapter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lora_train import artifacts, console
from lora_train.adapters import latest_name
from lora_train.config import checked_overrides, typed
from lora_train.errors import UserError, reported
from lora_train.inference import prompting
from lora_train.inference.generation import GenParams, GenRequest, generate
from lora_train.inference.registry import MultiAdapterModel, check_name
from lora_train.inference.scheduler import generate_all
from lora_train.model import random_model_note
from lora_train.schemas.infer import GenerateJob, PromptFormat, Scheduler

HELP = "commands: /adapter NAME (switch), /reset (forget the conversation), /exit"


def _lines(path: Path) -> list[str]:
    """The file's lines as text; bytes that are not UTF-8 are an error naming the line (a BOM is ignored)."""
    lines = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            lines.append(raw.decode("utf-8-sig" if n == 1 else "utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start} of the line); "
                            f"save the prompt file as UTF-8") from None
    return lines


def read_prompts(job: GenerateJob) -> list[str]:
    if job.prompt is not None and job.prompt_file is not None:
        raise UserError("give either prompt=... or prompt_file=..., not both")
    if job.prompt is not None:
        return [job.prompt]
    if job.prompt_file is None:
        raise UserError('nothing to complete: pass prompt="...", prompt_file=FILE or interactive=true')
    path = Path(job.prompt_file)
    if not path.is_file():
        raise UserError(f"prompt_file={job.prompt_file!r}: no such file")
    prompts = []
    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
                prompts.append(row["prompt"] if isinstance(row["prompt"], str) else None)
            except (ValueError, KeyError, TypeError):
                prompts.append(None)
            if prompts[-1] is None:
                raise UserError(f"{path}:{n}: expected a JSON object with a string field \"prompt\"")
        else:
            prompts.append(line)
    if not prompts:
        raise UserError(f"prompt_file={job.prompt_file!r} holds no prompt")
    return prompts


def check_adapters(host: MultiAdapterModel, names: list[str]) -> list[str]:
    if not names:
        raise UserError(f"name the adapters to use: adapters=[NAME,...] (known: {host.names() or 'none'}; "
                        f"'base' = the base model without adapter)")
    for name in names:
        if not host.is_base(name):
            try:
                host.folder_of(name)
            except UserError as e:
                raise UserError(f"adapters: {e} (known: {host.names() or 'none'})") from e
    return list(names)


def params_of(job: GenerateJob) -> GenParams:
    s = job.sampling
    p = GenParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                  stop=list(s.stop))
    try:
        p.check()
    except UserError as e:
        raise UserError(f"sampling.{e}") from e
    return p


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def request(host, fmt: PromptFormat, prompt: str, adapter: str, params: GenParams, **kw) -> GenRequest:
    """One row: the prompt rendered in `adapter`'s format (lora_train.inference.prompting)."""
    text, ids = prompting.user_prompt(host, adapter, prompt, fmt)
    return GenRequest(text, adapter, params, ids=ids, **kw)


def format_notes(host, adapters: list[str], fmt: PromptFormat) -> list[str]:
    """A line for each adapter whose prompts cannot use its training format (no lora_train.yaml)."""
    return [n for a in dict.fromkeys(adapters) if (n := prompting.format_of(host, a, fmt).note)]


def complete(host, job: GenerateJob, prompts: list[str], adapters: list[str], params: GenParams) -> list[dict]:
    """Every prompt with every adapter; streamed one at a time, or batched across adapters and prompts."""
    records = []
    pairs = [(i, p, a) for i, p in enumerate(prompts) for a in adapters]
    if job.stream:
        for i, p, a in pairs:
            if a == adapters[0]:
                _print(f"\n### prompt {i + 1}: {p}\n")
            _print(f"[{a}] ")
            req = request(host, job.format, p, a, params, on_text=_print)
            res = generate(host, [req])[0]
            _print("\n")
            records.append({"prompt": p, "adapter": a, "completion": res.text, "finish_reason": res.finish_reason})
        return records
    if job.batch_size < 1:
        raise UserError(f"batch_size={job.batch_size} must be at least 1")
    if job.scheduler == Scheduler.continuous:  # one running batch of batch_size rows, refilled as rows finish
        chunks = [pairs]
        run_chunk = lambda reqs: generate_all(host, reqs, job.batch_size, job.max_batch_tokens,  # noqa: E731
                                              job.max_prefill_tokens)
    else:  # static: batches of batch_size, each run until its longest row ends
        chunks = [pairs[i:i + job.batch_size] for i in range(0, len(pairs), job.batch_size)]
        run_chunk = lambda reqs: generate(host, reqs)  # noqa: E731
    for chunk in chunks:
        results = run_chunk([request(host, job.format, p, a, params) for _, p, a in chunk])
        for (i, p, a), res in zip(chunk, results):
            records.append({"prompt": p, "adapter": a, "completion": res.text, "finish_reason": res.finish_reason})
    for i, p in enumerate(prompts):
        _print(f"\n### prompt {i + 1}: {p}\n")
        for r in records:
            if r["prompt"] is p:
                _print(f"[{r['adapter']}] {r['completion']}\n")
    return records


def chat(host, adapter: str, params: GenParams, read=input, fmt: PromptFormat = PromptFormat.adapter) -> list[dict]:
    """A conversation in the terminal; every exchange is also returned as a record."""
    history, records = [], []
    _print(f"chatting with {adapter!r} ({HELP})\n")
    while True:
        try:
            line = read("you> ")
        except EOFError:
            break
        if not line.strip():
            continue
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = []
            continue
        if line.startswith("/adapter"):
            name = line[len("/adapter"):].strip()
            try:
                adapter = check_adapters(host, [name])[0]
                history = []
                for note in format_notes(host, [adapter], fmt):
                    _print(f"note: {note}\n")
            except UserError as e:
                _print(f"error: {e}\n")
            continue
        history.append({"role": "user", "content": line})
        try:  # the conversation in the adapter's format; a chat template may refuse it
            text, ids = prompting.conversation(host, adapter, history, fmt)
        except UserError as e:
            history.pop()
            _print(f"error: {e}\n")
            continue
        _print(f"{adapter}> ")
        res = generate(host, [GenRequest(text, adapter, params, on_text=_print, ids=ids)])[0]
        _print("\n")
        history.append({"role": "assistant", "content": res.text})
        records.append({"prompt": line, "adapter": adapter, "completion": res.text,
                        "finish_reason": res.finish_reason})
    return records


def run(cfg: DictConfig | GenerateJob) -> list[dict]:
    """Generate and print; returns one record per (prompt, adapter): prompt, adapter, completion, finish_reason."""
    job = typed(cfg, GenerateJob)
    console.progress_bars(console.wants_progress(job.progress))
    output = Path(job.output).expanduser() if job.output else None
    if output is not None:  # before anything is read or loaded: the completions must have somewhere to go
        artifacts.check_output(output, "output", job.overwrite)
    params = params_of(job)
    prompts = None if job.interactive else read_prompts(job)
    job.adapters = [latest_name(a, job.adapters_dir) for a in job.adapters]  # `latest`: the newest adapter's name
    for name in job.adapters:  # a bad name fails before the base loads
        check_name(name)
    host = MultiAdapterModel.from_config(job)
    adapters = check_adapters(host, job.adapters)
    for name in adapters[: host.max_resident]:  # load (and check against the base) before printing anything
        if not host.is_base(name):
            host.load(name)
    for note in format_notes(host, adapters, job.format):  # e.g. an adapter made elsewhere: gpt4all is a guess
        print(f"note: {note}", file=sys.stderr, flush=True)
    note = random_model_note(host.model_cfg.name_or_path)
    if note:  # a newcomer would otherwise take the random model's noise for a bug
        print(note, file=sys.stderr, flush=True)
    if job.interactive:
        records = chat(host, adapters[0], params, fmt=job.format)
    else:
        records = complete(host, job, prompts, adapters, params)
    if output is not None:  # written whole and renamed into place: never a half-written file
        artifacts.write_atomic(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"completions written to {output}", file=sys.stderr, flush=True)
    return records


@checked_overrides("generate")  # quant.mode=... while quant is null: one line saying to write quant=...
@hydra.main(config_path="pkg://lora_train.conf", config_name="generate", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
