"""`lora-data`: load, curate, report and export a data set without training.

    lora-data data.curation=v1.3-groovy                                    # what each step removes, and why
    lora-data data.source=messy.jsonl data.curation=v1.3-groovy output=curated.jsonl
    lora-train data=jsonl data.source=curated.jsonl                        # then train on the result

Rows stream from the source through the curation chain into the output file (written under a temporary name and
renamed when complete), so the data may be larger than memory. The report (rows in and out per step, skipped rows
with file:line and reason, token-length statistics and how many examples would be cut or dropped at
data.max_length) is printed and written as JSON beside the output, with a histogram of token lengths.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

import lora_train.schemas.curate  # noqa: F401  (registers the schema conf/curate.yaml names)
from lora_train import artifacts
from lora_train.config import typed
from lora_train.data.build import DataReport, check_data, iter_examples
from lora_train.errors import UserError, reported
from lora_train.schemas.curate import CurateJob

FORMATS = (".jsonl", ".parquet")


def _paths(job: CurateJob) -> tuple[Path | None, Path | None, Path | None]:
    out = Path(job.output).expanduser() if job.output else None
    if out is not None and out.suffix.lower() not in FORMATS:
        raise UserError(f"output={job.output!r}: use a .jsonl or .parquet file name")
    stem = out.with_suffix("") if out else None
    report = Path(job.report) if job.report else (Path(f"{stem}.report.json") if stem else None)
    hist = Path(job.histogram) if job.histogram else (Path(f"{stem}.lengths.png") if stem else None)
    for p, key in [(out, "output"), (report, "report"), (hist, "histogram")]:
        if p is not None:  # before any row is read: refused when it exists or could not be written
            artifacts.check_output(p, key, job.overwrite)
    return out, report, hist


class _Writer:
    """Curated rows to a temporary file, renamed into place only when every row is written."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows, self.batch, self.pq = 0, [], None
        self.f = open(self.tmp, "w", encoding="utf-8") if path.suffix.lower() == ".jsonl" else None

    def write(self, row: dict) -> None:
        self.rows += 1
        if self.f is not None:
            self.f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            return
        self.batch.append(row)
        if len(self.batch) >= 4096:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.batch:
            return
        try:
            table = pa.Table.from_pylist(self.batch, schema=self.pq.schema if self.pq else None)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise UserError(f"output={self.path}: rows with different column types cannot share one Parquet file "
                            f"({e}); write .jsonl instead") from e
        if self.pq is None:
            self.pq = pq.ParquetWriter(self.tmp, table.schema)
        self.pq.write_table(table)
        self.batch = []

    def close(self, ok: bool) -> None:
        try:
            if self.f is not None:
                self.f.close()
            elif ok:
                self._flush()
            if self.pq is not None:
                self.pq.close()
            if ok:
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def token_stats(lengths: list[int], max_length: int) -> dict:
    import numpy as np

    if not lengths:
        return {"examples": 0}
    a = np.asarray(lengths)
    q = lambda p: int(np.percentile(a, p))  # noqa: E731
    return {"examples": len(a), "min": int(a.min()), "mean": round(float(a.mean()), 1), "p50": q(50), "p90": q(90),
            "p99": q(99), "max": int(a.max()), "max_length": max_length,
            "over_max_length": int((a > max_length).sum())}


def plot_lengths(lengths: list[int], max_length: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(lengths, bins=50, color="tab:blue", alpha=0.8)
    ax.axvline(max_length, color="tab:red", linestyle="--", label=f"data.max_length = {max_length}")
    ax.set_xlabel("tokens per example (before any cut)")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with artifacts.atomic_file(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)


def _summary(result: dict) -> str:
    r = result
    lines = [f"source: {r['source']}" + (f" @ {r['revision']}" if r.get("revision") else "")
             + f"   format: {r['format']}   curation: {r['curation'] or '-'}   steps: {', '.join(r['filters']) or '-'}",
             f"read {r['rows_read']} rows, skipped {r['rows_skipped']} malformed"]
    lines += [f"  skipped {w}" for w in r["skipped_examples"][:5]]
    if r["steps"]:
        lines.append(f"{'step':<12}{'rows in':>9}{'rows out':>10}{'removed':>9}")
    for s in r["steps"]:
        extra = f"   (exact {s['exact']}, near {s['near']})" if s["step"] == "dedup" else ""
        lines.append(f"{s['step']:<12}{s['rows_in']:>9}{s['rows_out']:>10}{s['rows_in'] - s['rows_out']:>9}{extra}")
        lines += [f"    {e}" for e in s["examples"][:3]]
    lines.append(f"rows out: {r['rows_curated']}")
    t = r.get("tokens")
    if t and t.get("examples"):
        lines.append(f"tokens per example: min {t['min']}  mean {t['mean']}  p50 {t['p50']}  p90 {t['p90']}  "
                     f"p99 {t['p99']}  max {t['max']}")
        lines.append(f"at data.max_length={t['max_length']}: {t['over_max_length']} over the limit, "
                     f"{r['prompts_truncated']} prompts cut, {r['responses_truncated']} responses cut, "
                     f"{r['dropped_no_response_tokens']} would lose every response token (dropped)")
    return "\n".join(lines)


def run(cfg: DictConfig | CurateJob) -> dict:
    """Curate (and export) per the config; returns the report as a dict."""
    job = typed(cfg, CurateJob)
    out, report_path, hist_path = _paths(job)
    check_data(job.data)
    tok = None
    if job.tokens:
        from lora_train.data.examples import Tokenizer
        from lora_train.model import load_tokenizer, resolve_model

        tok = Tokenizer(load_tokenizer(resolve_model(job.model), job.model), job.data)
    report = DataReport(source=job.data.source, revision=job.data.revision, max_shown=job.show)
    writer = _Writer(out) if out else None
    lengths: list[int] = []
    chunk: list[dict] = []
    ok = False
    try:
        for ex in iter_examples(job.data, report, tok.lengths if tok else None):
            if writer:
                writer.write(ex["raw"])
            if tok:
                chunk.append(ex)
                if len(chunk) == 1024:
                    tok(chunk, report, lengths)
                    chunk = []
        if tok and chunk:
            tok(chunk, report, lengths)
        ok = True
    finally:
        if writer:
            writer.close(ok)
    result = {**asdict(report), "rows_out": report.rows_curated, "output": str(out) if out else None}
    for s in result["steps"]:
        s["removed"] = s["rows_in"] - s["rows_out"]
    if tok:
        result["tokens"] = token_stats(lengths, job.data.max_length)
        if hist_path and lengths:
            plot_lengths(lengths, job.data.max_length, hist_path, f"{job.data.name}: {len(lengths)} examples")
            result["histogram"] = str(hist_path)
    if report_path:
        artifacts.write_atomic(report_path, json.dumps(result, indent=2, default=str) + "\n")
    print(_summary(result), flush=True)
    written = [str(p) for p in (out, report_path, hist_path) if p is not None and p.exists()]
    if written:
        print("wrote " + ", ".join(written), flush=True)
    return result


@hydra.main(config_path="pkg://lora_train.conf", config_name="curate", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
