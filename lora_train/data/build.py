"""Data: source rows -> canonical examples -> curation -> token ids and labels, with a report of every row lost.

The pieces live in their own modules: sources.py (files, globs, folders, the Hub; file:line of every row),
formats.py (gpt4all / alpaca / chat -> one canonical example), filters.py (the curation chain), examples.py
(templates, the loss mask, length rules) and packing.py (packed batches). This module strings them together for
`lora-train` (build_datasets) and `lora-data` (iter_examples).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

from lora_train.data import cache as data_cache
from lora_train.data.examples import Tokenizer, check_template
from lora_train.data.filters import StepReport, build_steps, chain, run_steps
from lora_train.data.filters import check as check_filters
from lora_train.data.formats import RowError, check_columns, to_example, value_problem
from lora_train.data.sources import Bad, check_source, is_local, iter_rows, resolve_source  # noqa: F401 (re-exported)
from lora_train.errors import UserError
from lora_train.schemas import DataConfig, FilterStep

MAX_SHOWN = 5  # offending positions listed in reports and messages


@dataclass
class DataReport:
    """What happened to the rows on their way to the trainer; saved in metrics.json and the model card."""

    source: str
    revision: str | None
    format: str = "gpt4all"
    curation: str | None = None
    filters: list[str] = field(default_factory=list)  # the steps that ran, in order
    rows_read: int = 0
    rows_skipped: int = 0  # malformed rows (bad JSON or encoding, wrong shape, unusable values without `clean`)
    skipped_examples: list[str] = field(default_factory=list)  # "file:line: reason", the first few
    steps: list[StepReport] = field(default_factory=list)  # rows in and out of each curation step
    rows_curated: int = 0  # rows left after curation
    prompts_truncated: int = 0
    responses_truncated: int = 0
    dropped_no_response_tokens: int = 0
    train_rows: int = 0
    val_rows: int = 0
    max_shown: int = MAX_SHOWN  # how many offending positions the lists above keep
    cache: str | None = None  # the data cache entry the examples came from or went to (data_cache.py)

    @classmethod
    def from_dict(cls, d: dict) -> "DataReport":
        return cls(**{**d, "steps": [StepReport(**s) for s in d["steps"]]})

    def skip(self, where: str, reason: str, strict: bool) -> None:
        if strict:
            raise UserError(f"{where}: {reason} (data.strict=true; set data.strict=false to skip such rows)")
        self.rows_skipped += 1
        if len(self.skipped_examples) < self.max_shown:
            self.skipped_examples.append(f"{where}: {reason}")


def check_data(cfg: DataConfig) -> str:
    """Everything about `data` that can be checked before loading anything; returns the resolved source."""
    check_columns(cfg)
    check_template(cfg)
    check_filters(cfg)
    return check_source(cfg)


def iter_examples(cfg: DataConfig, report: DataReport, lengths=None) -> Iterator[dict]:
    """Curated canonical examples, streamed; `report` fills in as they pass. `lengths` (a token counter) is needed
    only by the max_length step."""
    check_data(cfg)
    steps = build_steps(cfg, lengths, report.max_shown)
    report.format, report.curation = cfg.format.value, cfg.curation.value if cfg.curation else None
    report.filters, report.steps = [s.step for s, _ in steps], [s for s, _ in steps]
    cleaning = FilterStep.clean in chain(cfg)

    def valid() -> Iterator[dict]:
        for where, row in iter_rows(cfg):
            report.rows_read += 1
            if isinstance(row, Bad):
                report.skip(where, row.reason, cfg.strict)
                continue
            try:
                ex = to_example(row, cfg, where)
            except RowError as e:
                report.skip(where, str(e), cfg.strict)
                continue
            # Without `clean`, unusable values cannot be trained on: skipped (counted) like malformed rows.
            problem = None if cleaning else value_problem(ex, cfg)
            if problem:
                report.skip(where, problem, cfg.strict)
                continue
            yield ex

    for ex in run_steps(valid(), steps):
        report.rows_curated += 1
        yield ex


def _no_rows(cfg: DataConfig, report: DataReport) -> UserError:
    removed = "; ".join(f"{s.step} removed {s.rows_in - s.rows_out}" for s in report.steps)
    return UserError(f"data.source={cfg.source!r}: no usable rows ({report.rows_skipped} skipped: "
                     f"{'; '.join(report.skipped_examples) or 'the source is empty'}"
                     + (f"; curation: {removed}" if removed else "") + ")")


def read_rows(cfg: DataConfig, lengths=None) -> tuple[list[dict], DataReport]:
    """Curated examples in memory and the report of what was skipped or removed and why."""
    report = DataReport(source=cfg.source, revision=cfg.revision)
    rows = list(iter_examples(cfg, report, lengths))
    if not rows:
        raise _no_rows(cfg, report)
    return rows, report


def tokenize(rows: list[dict], tokenizer, cfg: DataConfig, report: DataReport) -> list[dict[str, list[int]]]:
    """Trainer-ready examples: input_ids and labels (-100 outside responses), at most cfg.max_length tokens."""
    return Tokenizer(tokenizer, cfg)(rows, report)


def _streamed_dataset(cfg: DataConfig, tok: Tokenizer, report: DataReport):
    """Tokenized examples written to an on-disk Arrow dataset as they are produced: memory stays bounded."""
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    def gen():
        chunk = []
        for ex in iter_examples(cfg, report, tok.lengths):
            chunk.append(ex)
            if len(chunk) == 1024:
                yield from tok(chunk, report)
                chunk = []
        yield from tok(chunk, report)

    # A private cache folder: datasets would otherwise reuse an earlier run's result and never run gen (the report
    # would stay empty); removed when the process ends.
    cache = tempfile.mkdtemp(prefix="lora_train_data-")
    atexit.register(shutil.rmtree, cache, True)
    try:
        return Dataset.from_generator(gen, cache_dir=cache)
    except UserError:
        raise
    except DatasetGenerationError as e:  # datasets wraps errors raised inside gen: a user error stays one
        cause = e.__cause__ or e.__context__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def _split(ds, n_val: int, seed: int):
    """(train, val): the split Dataset.train_test_split(test_size=n_val, seed=seed) makes, with its index mappings
    kept in memory: a cached dataset's folder is shared between runs and must not collect index files (datasets
    refuses keep_in_memory for a dataset on disk)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(ds))
    return ds.select(order[n_val:], keep_in_memory=True), ds.select(order[:n_val], keep_in_memory=True)


def build_datasets(cfg: DataConfig, tokenizer, seed: int):
    """(train Dataset, eval Dataset or None, DataReport)."""
    from datasets import Dataset

    tok = Tokenizer(tokenizer, cfg)
    key = data_cache.key(cfg, tokenizer)
    cached = data_cache.load(key)
    if cached is not None:
        ds, report = cached[0], DataReport.from_dict(cached[1])
        report.cache = f"reused {data_cache.folder(key)}"
    elif cfg.streaming:
        report = DataReport(source=cfg.source, revision=cfg.revision)
        ds = _streamed_dataset(cfg, tok, report)
        if report.rows_curated == 0:
            raise _no_rows(cfg, report)
    else:
        rows, report = read_rows(cfg, tok.lengths)
        ds = Dataset.from_list(tok(rows, report))
    stored = data_cache.store(key, ds, report) if cached is None and len(ds) else None
    if stored is not None:
        report.cache = f"stored {stored}"
    if len(ds) == 0:
        raise UserError(f"data.source={cfg.source!r}: every example lost all its response tokens; "
                        f"raise data.max_length (now {cfg.max_length})")
    n_val = int(round(len(ds) * cfg.val_fraction)) if cfg.val_fraction > 0 else 0
    if cfg.val_fraction > 0 and len(ds) > 1:
        n_val = min(max(1, n_val), len(ds) - 1)
    if n_val:
        train, val = _split(ds, n_val, seed)
    else:
        train, val = ds, None
    report.train_rows, report.val_rows = len(train), (len(val) if val is not None else 0)
    return train, val, report
