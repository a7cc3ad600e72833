"""Curation: the ordered filter chain (data.curation + data.filters) over canonical examples, with rows in and out
and a few examples of what each step removed and why.

The chains reproduce the GPT4All-J dataset revisions on your own data:

    v1.0         clean
    v1.1-breezy  clean, breezy            (drop responses containing "AI language model")
    v1.2-jazzy   clean, breezy, jazzy     (also drop refusals: data.refusal_phrases)
    v1.3-groovy  clean, breezy, jazzy, dedup   (also drop exact and near duplicates)

Steps work on chunks of rows and keep their state between chunks (dedup remembers every kept row), so a source
larger than memory streams through them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from lora_train.data.dedup import Deduper
from lora_train.data.formats import texts, turns, value_problem
from lora_train.errors import UserError
from lora_train.schemas import DataConfig, DedupKey, FilterStep

CHAINS = {
    "v1.0": [FilterStep.clean],
    "v1.1-breezy": [FilterStep.clean, FilterStep.breezy],
    "v1.2-jazzy": [FilterStep.clean, FilterStep.breezy, FilterStep.jazzy],
    "v1.3-groovy": [FilterStep.clean, FilterStep.breezy, FilterStep.jazzy, FilterStep.dedup],
}
AI_PHRASE = "AI language model"  # the v1.1-breezy criterion, case-insensitive
MAX_EXAMPLES = 5  # removed rows listed per step in reports
CHUNK = 4096  # rows per chunk: large enough for numpy MinHash, small enough to stream


def chain(cfg: DataConfig) -> list[FilterStep]:
    """data.curation's steps followed by data.filters, each step once, in that order."""
    steps = list(CHAINS[cfg.curation.value]) if cfg.curation is not None else []
    for s in cfg.filters:
        if s not in steps:
            steps.append(s)
    return steps


def check(cfg: DataConfig) -> None:
    if not 0 < cfg.dedup_threshold <= 1:
        raise UserError(f"data.dedup_threshold={cfg.dedup_threshold!r} is out of range (0, 1]")
    if FilterStep.jazzy in chain(cfg) and not [p for p in cfg.refusal_phrases if p.strip()]:
        raise UserError("data.refusal_phrases is empty, so the jazzy step would remove nothing; list phrases or "
                        "drop the step")


@dataclass
class StepReport:
    step: str
    rows_in: int = 0
    rows_out: int = 0
    examples: list[str] = field(default_factory=list)  # "file:line: why", the first max_shown
    exact: int = 0  # dedup only: byte-identical duplicates
    near: int = 0  # dedup only: duplicates after normalisation or by MinHash similarity
    max_shown: int = MAX_EXAMPLES

    def removed(self, ex: dict, why: str) -> None:
        if len(self.examples) < self.max_shown:
            self.examples.append(f"{ex['where']}: {why}")


def _norm_quotes(s: str) -> str:
    return s.replace("\u2019", "'").replace("\u2018", "'").lower()


def clean_problem(ex: dict, cfg: DataConfig) -> str | None:
    """What the original clean step removed: unusable values, an empty prompt, or a prompt of one character."""
    problem = value_problem(ex, cfg)
    if problem:
        return problem
    first_user = next((t["content"] for t in turns(ex) if t["role"] == "user"), "")
    if len(first_user.strip()) <= 1:
        return f"prompt is {'empty' if not first_user.strip() else 'one character'} ({first_user.strip()!r})"
    return None


def _per_row(test: Callable[[dict], str | None]):
    def step(chunk: list[dict], report: StepReport) -> list[dict]:
        kept = []
        for ex in chunk:
            why = test(ex)
            if why is None:
                kept.append(ex)
            else:
                report.removed(ex, why)
        return kept

    return step


def _phrase_test(phrases: list[str], label: str) -> Callable[[dict], str | None]:
    wanted = [(_norm_quotes(p), p) for p in phrases if p.strip()]

    def test(ex: dict) -> str | None:
        response = _norm_quotes(texts(ex)[1])
        hit = next((orig for p, orig in wanted if p in response), None)
        return f"{label} ({hit!r})" if hit else None

    return test


def _dedup_step(cfg: DataConfig):
    deduper = Deduper(cfg.dedup_threshold)

    def key(ex: dict) -> str:
        prompt, response = texts(ex)
        return {DedupKey.pair: f"{prompt}\n{response}", DedupKey.prompt: prompt, DedupKey.response: response}[
            cfg.dedup_key]

    def step(chunk: list[dict], report: StepReport) -> list[dict]:
        kept = []
        for ex, verdict in zip(chunk, deduper.check([key(e) for e in chunk], [e["where"] for e in chunk])):
            if verdict is None:
                kept.append(ex)
                continue
            kind, of, sim = verdict
            setattr(report, kind, getattr(report, kind) + 1)
            report.removed(ex, f"{kind} duplicate of {of}" + (f" (similarity {sim:.2f})" if sim < 1 else ""))
        return kept

    return step


def _max_length_step(cfg: DataConfig, lengths: Callable[[list[dict]], list[int]] | None):
    def step(chunk: list[dict], report: StepReport) -> list[dict]:
        if lengths is None:  # counting rows without a tokenizer (dry_run, lora-data tokens=false): not applied
            if not report.examples:
                report.examples.append("not applied: counting tokens needs the tokenizer")
            return chunk
        kept = []
        for ex, n in zip(chunk, lengths(chunk)):
            if n <= cfg.max_length:
                kept.append(ex)
            else:
                report.removed(ex, f"{n} tokens > data.max_length={cfg.max_length}")
        return kept

    return step


def build_steps(cfg: DataConfig, lengths=None, max_shown: int = MAX_EXAMPLES) -> list[tuple[StepReport, Callable]]:
    """(report, step function) for each step of the chain, ready to run."""
    check(cfg)
    makers = {
        FilterStep.clean: lambda: _per_row(lambda ex: clean_problem(ex, cfg)),
        FilterStep.breezy: lambda: _per_row(_phrase_test([AI_PHRASE], "mentions an AI language model")),
        FilterStep.jazzy: lambda: _per_row(_phrase_test(cfg.refusal_phrases, "refusal")),
        FilterStep.dedup: lambda: _dedup_step(cfg),
        FilterStep.max_length: lambda: _max_length_step(cfg, lengths),
    }
    return [(StepReport(step=s.value, max_shown=max_shown), makers[s]()) for s in chain(cfg)]


def run_steps(rows: Iterable[dict], steps: list[tuple[StepReport, Callable]]) -> Iterator[dict]:
    """Stream rows through the steps chunk by chunk; each StepReport counts its rows in and out."""
    chunk: list[dict] = []

    def flush(batch: list[dict]) -> list[dict]:
        for report, step in steps:
            report.rows_in += len(batch)
            batch = step(batch, report) if batch else batch
            report.rows_out += len(batch)
        return batch

    for ex in rows:
        chunk.append(ex)
        if len(chunk) >= CHUNK:
            yield from flush(chunk)
            chunk = []
    if chunk:
        yield from flush(chunk)
