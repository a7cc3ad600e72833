"""Data: read GPT4All-J-style rows, check them, tokenize them into trainer-ready examples.

An example is prompt + "\\n" + response + EOS with loss on the response and its EOS only (labels -100 on the
prompt). A prompt takes at most `data.max_prompt_fraction` of `data.max_length` tokens, so response tokens
always remain; an example left with no trainable token is dropped and counted, never trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lora_train.errors import UserError
from lora_train.schema import SAMPLE_DATA, DataConfig

SEPARATOR = "\n"  # between prompt and response, as in the GPT4All-J training code
MAX_SHOWN = 5  # offending positions listed in reports and messages


@dataclass
class DataReport:
    """What happened to the rows on their way to the trainer; saved in metrics.json and the model card."""

    source: str
    revision: str | None
    rows_read: int = 0
    rows_skipped: int = 0  # malformed rows (bad JSON, missing/non-string/empty fields)
    skipped_examples: list[str] = field(default_factory=list)  # "file:line: reason", the first few
    prompts_truncated: int = 0
    responses_truncated: int = 0
    dropped_no_response_tokens: int = 0
    train_rows: int = 0
    val_rows: int = 0

    def skip(self, where: str, reason: str, strict: bool) -> None:
        if strict:
            raise UserError(f"{where}: {reason} (data.strict=true; set data.strict=false to skip such rows)")
        self.rows_skipped += 1
        if len(self.skipped_examples) < MAX_SHOWN:
            self.skipped_examples.append(f"{where}: {reason}")


def resolve_source(source: str) -> str:
    """The bundled sample's path, a local file's path, or the Hub id unchanged."""
    if source == SAMPLE_DATA:
        return str(Path(__file__).parent / "data_files" / "sample.jsonl")
    return source


def is_local(source: str) -> bool:
    """A Hub id looks like `org/name`; anything with a file extension, a leading ./ / ~ or that exists is local."""
    return (
        os.path.exists(os.path.expanduser(source))
        or source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in {".jsonl", ".json", ".parquet", ".csv"}
        or source.count("/") != 1
    )


def check_source(cfg: DataConfig) -> str:
    """Fail fast, before any model loads, when a local data source does not exist."""
    source = resolve_source(cfg.source)
    if is_local(source):
        path = Path(os.path.expanduser(source))
        if not path.is_file():
            raise UserError(f"data.source={cfg.source!r}: no such file ({path.resolve()})")
        if path.suffix.lower() != ".jsonl":
            raise UserError(f"data.source={cfg.source!r}: expected a .jsonl file (one JSON object per line)")
    return source


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"{path}:{n}"
            if not raw.strip():
                continue
            try:
                yield where, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield where, ValueError(f"not UTF-8 ({e.reason} at byte {e.start})")
            except json.JSONDecodeError as e:
                yield where, ValueError(f"malformed JSON ({e.msg} at column {e.colno})")


def _hub_rows(cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.source, revision=cfg.revision, split=cfg.split)
    except Exception as e:  # network, unknown id or revision: all user-fixable
        raise UserError(f"data.source={cfg.source!r} (revision {cfg.revision!r}): could not load: {e}") from e
    for n, row in enumerate(ds):
        yield f"{cfg.source}@{cfg.revision or 'main'}[{n}]", row


def read_rows(cfg: DataConfig) -> tuple[list[dict[str, str]], DataReport]:
    """Valid {prompt, response, source} rows and a report of what was skipped and why."""
    source = check_source(cfg)
    report = DataReport(source=cfg.source, revision=cfg.revision)
    rows = []
    items = _jsonl_rows(Path(os.path.expanduser(source))) if is_local(source) else _hub_rows(cfg)
    for where, row in items:
        if cfg.max_rows is not None and report.rows_read >= cfg.max_rows:
            break
        report.rows_read += 1
        if isinstance(row, Exception):
            report.skip(where, str(row), cfg.strict)
            continue
        if not isinstance(row, dict):
            report.skip(where, f"expected a JSON object, got {type(row).__name__}", cfg.strict)
            continue
        problem = next((f"{k!r} is missing" if k not in row else f"{k!r} is not a string"
                        for k in ("prompt", "response") if not isinstance(row.get(k), str)), None)
        if problem is None and not row["response"].strip():
            problem = "'response' is empty"
        if problem:
            report.skip(where, problem, cfg.strict)
            continue
        src = row.get("source")
        rows.append({"prompt": row["prompt"], "response": row["response"], "source": src if isinstance(src, str) else ""})
    if not rows:
        raise UserError(f"data.source={cfg.source!r}: no usable rows ({report.rows_skipped} skipped: "
                        f"{'; '.join(report.skipped_examples) or 'the source is empty'})")
    return rows, report


def tokenize(rows: list[dict[str, str]], tokenizer, cfg: DataConfig, report: DataReport) -> list[dict[str, list[int]]]:
    """Trainer-ready examples: input_ids and labels (-100 on the prompt), at most cfg.max_length tokens."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no EOS token: the model could never learn to stop")
    max_prompt = max(1, int(cfg.max_length * cfg.max_prompt_fraction))
    sep = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
    examples = []
    for p, r in zip(prompts, responses):
        if len(p) + len(sep) > max_prompt:  # keep the prompt's start, as the original recipe did
            p = p[: max(0, max_prompt - len(sep))]
            report.prompts_truncated += 1
        p = p + sep
        r = r + [eos]
        room = cfg.max_length - len(p)
        if room < len(r):
            # A cut response ends without EOS: teaching the model to stop mid-sentence would be wrong.
            r = r[: max(0, room)]
            report.responses_truncated += 1
        if not r:
            report.dropped_no_response_tokens += 1
            continue
        examples.append({"input_ids": p + r, "labels": [-100] * len(p) + r})
    return examples


def build_datasets(cfg: DataConfig, tokenizer, seed: int):
    """(train Dataset, eval Dataset or None, DataReport)."""
    from datasets import Dataset

    rows, report = read_rows(cfg)
    examples = tokenize(rows, tokenizer, cfg, report)
    if not examples:
        raise UserError(f"data.source={cfg.source!r}: every example lost all its response tokens; "
                        f"raise data.max_length (now {cfg.max_length})")
    ds = Dataset.from_list(examples)
    n_val = int(round(len(ds) * cfg.val_fraction)) if cfg.val_fraction > 0 else 0
    if cfg.val_fraction > 0 and len(ds) > 1:
        n_val = min(max(1, n_val), len(ds) - 1)
    if n_val:
        parts = ds.train_test_split(test_size=n_val, seed=seed, shuffle=True)
        train, val = parts["train"], parts["test"]
    else:
        train, val = ds, None
    report.train_rows, report.val_rows = len(train), (len(val) if val is not None else 0)
    return train, val, report
