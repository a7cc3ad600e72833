"""What `lora-eval` writes: the model-card table (results.md), every number (results.json), and the table in
each adapter's model card (README.md), replacing the one an earlier evaluation put there."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lora_train.evaluation import harness

START, END = "<!-- lora-eval:start -->", "<!-- lora-eval:end -->"  # the card section this module owns


@dataclass
class ModelResult:
    name: str  # the row's label: "<base> (base)" or the adapter's folder name
    adapter: str | None  # the adapter folder, None for the base
    harness: dict | None = None  # lm-eval's results (harness.evaluate)
    loss: dict[str, dict] = field(default_factory=dict)  # eval set name -> {"loss", "perplexity", "tokens", "rows"}


@dataclass
class Table:
    columns: list[str]  # lm-eval task names
    metrics: dict[str, str]  # task -> metric shown
    cells: dict[str, dict[str, float | None]]  # model name -> task -> shown value
    average: dict[str, float | None]  # model name -> mean over the percentage columns


def score_table(models: list[ModelResult], tasks: list[str], overrides: dict[str, str]) -> Table:
    runs = [m.harness for m in models if m.harness]
    cols = harness.columns(tasks, runs[0]) if runs else []
    metrics = {}
    for task in cols:
        available = harness.metrics_of(runs[0]["results"][task])
        metrics[task] = harness.table_metric(task, available, overrides)
    cells, average = {}, {}
    for m in models:
        row = {}
        for task in cols:
            got = harness.metrics_of((m.harness or {}).get("results", {}).get(task, {})).get(metrics[task])
            row[task] = harness.shown(metrics[task], got["value"]) if got else None
        percent = [row[t] for t in cols if metrics[t].split(",")[0] in harness.PERCENT]
        cells[m.name] = row
        average[m.name] = round(sum(percent) / len(percent), 1) if percent and None not in percent else None
    return Table(cols, metrics, cells, average)


def _num(v) -> str:
    return "-" if v is None else f"{v:.1f}" if isinstance(v, float) and abs(v) >= 1 else f"{v}"


def scores_markdown(table: Table, models: list[ModelResult]) -> str:
    if not table.columns:
        return ""
    head = ["Model", *(harness.label(t) for t in table.columns), "Avg."]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for m in models:
        values = [_num(table.cells[m.name][t]) for t in table.columns] + [_num(table.average[m.name])]
        lines.append(f"| {m.name} | " + " | ".join(values) + " |")
    shown = ", ".join(f"{harness.label(t)} {table.metrics[t]}" for t in table.columns)
    return "\n".join(lines) + f"\n\nMetric per task (x100 for accuracies): {shown}. Avg. is the mean of the accuracy columns."


def loss_markdown(models: list[ModelResult], sets: dict[str, str]) -> str:
    if not sets:
        return ""
    head = ["Model"] + [f"{name}: loss / perplexity" for name in sets]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(sets)]
    for m in models:
        cells = [f"{m.loss[s]['loss']:.4f} / {m.loss[s]['perplexity']:.2f}" if s in m.loss else "-" for s in sets]
        lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
    notes = "; ".join(f"{name}: {desc}" for name, desc in sets.items())
    return "\n".join(lines) + f"\n\nMean loss per labelled token (response and EOS). Data: {notes}."


def results_markdown(header: str, scores: str, losses: str) -> str:
    parts = ["# Evaluation", "", header, ""]
    if scores:
        parts += ["## Common-sense tasks (lm-evaluation-harness)", "", scores, ""]
    if losses:
        parts += ["## Loss and perplexity", "", losses, ""]
    return "\n".join(parts)


def card_section(header: str, scores: str, losses: str) -> str:
    body = [START, "## Evaluation", "", header, ""]
    body += [scores, ""] if scores else []
    body += ["### Loss and perplexity", "", losses, ""] if losses else []
    return "\n".join(body + [END])


def write_atomic(path: Path, text: str) -> None:
    """Write next to the target, then rename over it: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_card(folder: Path, section: str) -> Path:
    """Put `section` into folder/README.md: in place of an earlier lora-eval section, else before `## Data`
    (after the training results), else at the end."""
    card = folder / "README.md"
    text = card.read_text() if card.is_file() else f"# {folder.name}\n"
    if START in text and END in text.split(START, 1)[1]:
        before, rest = text.split(START, 1)
        text = before + section + rest.split(END, 1)[1]
    elif "\n## Data\n" in text:
        before, after = text.split("\n## Data\n", 1)
        text = before.rstrip("\n") + "\n\n" + section + "\n\n## Data\n" + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_atomic(card, text)
    return card
