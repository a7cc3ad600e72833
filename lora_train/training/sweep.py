"""Hydra multirun for `lora-train -m`: one adapter folder per job, and a summary table when the sweep ends.

    lora-train -m lora.r=8,16 train.learning_rate=1e-4,2e-5          # 4 runs, then multirun/<time>/summary.md
    lora-train -m sweep=optuna                                        # Optuna minimises the eval loss
    lora-train -m launcher=slurm experiment=gpt4all_j_lora_6b lora.r=8,16   # one Slurm job per run

Hydra's sweepers and launchers do the work; this module only
- names each job's adapter `<run_name>-<job number>-<its overrides>` (the default run_name's timestamp is the
  sweep's: SweepSummary resolves it once and Hydra copies resolved values into every job, so one sweep's adapters
  sort together),
- leaves a small record in the job's folder under `hydra.sweep.dir`, which is readable from any launcher
  (in-process, joblib workers or Slurm nodes),
- keeps a job that fails with a user error (a bad value in one combination) from ending the sweep: the error is
  recorded, the other jobs run, an Optuna trial is told as failed, and the sweep exits non-zero naming the failed
  jobs, and
- turns those records and each adapter's metrics.json into `summary.md` and `summary.csv` (SweepSummary), rewritten
  after every job, so a sweep stopped half-way still has one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lora_train import artifacts
from lora_train.errors import UserError

RECORD = "lora_train_job.json"
METRICS = ["train_loss", "eval_loss", "eval_perplexity", "global_step", "runtime_s", "trained_tokens_per_s"]
# Overrides that say how a sweep runs, not what a run is: they stay out of folder names and settings columns.
NOT_SETTINGS = {"run_name", "adapters_dir", "overwrite", "progress", "sweep", "launcher"}


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def settings(overrides: list[str]) -> dict[str, str]:
    """`['lora.r=8', '+x=1']` -> `{'lora.r': '8', 'x': '1'}`, without the keys that are not settings."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    out = {k.lstrip("+~"): v for k, v in pairs}
    return {k: v for k, v in out.items() if k not in NOT_SETTINGS}


def folder_suffix(num: int, overrides: list[str]) -> str:
    """A folder-safe name for one job: its number (unique in the sweep) and its settings (readable)."""
    text = ",".join(f"{k}={v}" for k, v in settings(overrides).items())
    text = re.sub(r"[^A-Za-z0-9._+=,-]", "_", text)
    if len(text) > 120:  # file names stop at 255 bytes; keep the start readable and the whole unique
        text = text[:110] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{num}-{text}" if text else str(num)


def job_config(cfg: DictConfig) -> DictConfig:
    """Outside a multirun, `cfg` unchanged; inside one, `cfg` with this job's own run_name."""
    if in_multirun():
        hc = HydraConfig.get()
        cfg.run_name = f"{cfg.run_name}-{folder_suffix(hc.job.num, list(hc.overrides.task))}"
    return cfg


class Failed:
    """What a failed job hands its sweeper instead of a loss. Optuna's sweeper turns the value into a float, which
    raises here with the job's error, so the trial is told to Optuna as failed and the study goes on."""

    def __init__(self, error: str):
        self.error = error

    def __float__(self) -> float:
        raise ValueError(self.error)

    def __repr__(self) -> str:
        return f"failed: {self.error}"


def _record(output_dir: Path, num: int, overrides: list[str], **fields) -> None:
    record = {"num": num, "overrides": overrides, **fields}
    artifacts.write_atomic(output_dir / RECORD, json.dumps(record, indent=2, default=str) + "\n")


def finish_job(folder: Path | None) -> float | None:
    """The value a sweeper optimises (eval loss, or train loss without a validation split); in a multirun, also
    record where this job's adapter went, for the summary."""
    if folder is None or not (folder / "metrics.json").is_file():
        return None  # dry_run, or a rank other than 0
    metrics = json.loads((folder / "metrics.json").read_text())
    objective = metrics.get("eval_loss", metrics.get("train_loss"))
    if in_multirun():
        hc = HydraConfig.get()
        _record(Path(hc.runtime.output_dir), hc.job.num, list(hc.overrides.task), status="ok", adapter=str(folder),
                objective=objective)
    return objective


def run_job(run: Callable[[DictConfig], Path | None], cfg: DictConfig) -> float | Failed | None:
    """One job: `run` on the job's config, and what its sweeper optimises. Outside a multirun a UserError goes up (one
    line on stderr, exit 2); inside one it fails this job only: recorded for the summary, printed with the job's
    number and settings, and returned as Failed, while the sweep goes on with the next job."""
    if not in_multirun():
        return finish_job(run(job_config(cfg)))
    hc = HydraConfig.get()
    num, overrides = hc.job.num, list(hc.overrides.task)
    try:
        return finish_job(run(job_config(cfg)))
    except UserError as e:
        _record(Path(hc.runtime.output_dir), num, overrides, status="failed", error=str(e))
        print(f"error: job {num} ({' '.join(overrides) or 'no overrides'}): {e}", file=sys.stderr, flush=True)
        return Failed(str(e))


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job that ended: its status, its settings, then its metrics (or its error)."""
    rows = []
    for path in sweep_dir.rglob(RECORD):
        record = json.loads(path.read_text())
        row = {"job": record["num"], "status": record.get("status", "ok"), **settings(record["overrides"])}
        if row["status"] == "ok":
            metrics_file = Path(record["adapter"]) / "metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
            row.update({k: metrics.get(k) for k in METRICS}, adapter=record["adapter"])
        else:
            row["error"] = record.get("error", "")
        rows.append(row)
    return sorted(rows, key=lambda r: r["job"])


def failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] != "ok"]


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = ["job", "status"]
    for row in rows:
        cols += [k for k in row if k not in cols]
    # settings first, metrics and the folder (or the error) last, whatever order jobs came in
    tail = [*METRICS, "adapter"] + (["error"] if "error" in cols else [])
    return [c for c in cols if c not in tail] + tail


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.5g}"
    return " ".join(str(v).split()).replace("|", "\\|")  # one table cell: no line breaks, no column separators


def markdown(rows: list[dict], cols: list[str]) -> str:
    """The table a person reads: settings shared by every run are stated once above it, not repeated per row."""
    shared = {c: rows[0].get(c) for c in cols if c not in METRICS and c not in ("job", "status", "adapter", "error")
              and len(rows) > 1 and len({str(r.get(c)) for r in rows}) == 1}
    cols = [c for c in cols if c not in shared and (c != "status" or failed(rows))]  # status: only when it tells
    lines = [f"settings of every run: {', '.join(f'{k}={v}' for k, v in shared.items())}", ""] if shared else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    scored = [r for r in rows if r.get("eval_loss") is not None]
    if scored:
        best = min(scored, key=lambda r: r["eval_loss"])
        lines += ["", f"best eval loss: job {best['job']}, {best['eval_loss']:.4f}, {best['adapter']}"]
    if failed(rows):
        jobs = ", ".join(str(r["job"]) for r in failed(rows))
        lines += ["", f"failed: {len(failed(rows))} of {len(rows)} jobs (job {jobs}); their errors are in the table"]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, rows: list[dict]) -> tuple[Path, Path] | None:
    """summary.md and summary.csv of `rows` (collect's) in the sweep folder, each replaced whole; None when no job
    has ended."""
    if not rows:
        return None
    cols = _columns(rows)
    md = sweep_dir / "summary.md"
    artifacts.write_atomic(md, markdown(rows, cols))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    artifacts.write_atomic(sweep_csv := sweep_dir / "summary.csv", buf.getvalue())
    return md, sweep_csv


SKIP = ("job", "status", "error")  # columns that are not a job's settings


class SweepSummary(Callback):
    """Registered in conf/train.yaml (hydra.callbacks); Hydra calls it in the launching process after every job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Resolving run_name here caches its ${now:} in the sweep's config; Hydra copies that cache into every job's
        # config, so all jobs of one sweep share one timestamp (whatever hydra.sweep.dir is set to).
        str(config.run_name)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # A job that raised something other than a user error (a bug, out of memory) left no record: note it, so the
        # summary lists it even when the sweeper then stops the sweep.
        out = Path(str(config.hydra.runtime.output_dir))
        if job_return.status == JobStatus.FAILED and not (out / RECORD).is_file():
            try:
                job_return.return_value  # a failed job's value raises the job's exception
            except Exception as error:  # whatever the job raised: a bug keeps its traceback, on stderr
                print(f"job {config.hydra.job.num} failed with an unexpected error:", file=sys.stderr)
                traceback.print_exception(error, file=sys.stderr)
                _record(out, config.hydra.job.num, list(config.hydra.overrides.task), status="failed",
                        error=f"{type(error).__name__}: {error}")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = collect(sweep_dir)
        write_summary(sweep_dir, rows)
        # After its last trial Optuna's sweeper asks the study for the best one; with every trial failed that ends in
        # a traceback. End such a sweep here instead, the way every failed sweep ends: the summary and the errors.
        trials = OmegaConf.select(config, "hydra.sweeper.n_trials")
        if trials is not None and len(rows) >= trials and not any(r["status"] == "ok" for r in rows):
            self.on_multirun_end(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = collect(sweep_dir)
        written = write_summary(sweep_dir, rows)
        if written is None:
            print("sweep finished: no job wrote an adapter (dry_run?)", flush=True)
            return
        md, csv_path = written
        print(f"\nsweep summary ({md}, {csv_path}):\n\n{md.read_text()}", flush=True)
        if failed(rows):  # the sweep as a whole did not do what was asked: a non-zero status, naming what failed
            varying = [c for c in _columns(rows) if c not in SKIP and c not in METRICS and c != "adapter"
                       and (len(rows) == 1 or len({str(r.get(c)) for r in rows}) > 1)]
            listed = "; ".join(f"job {r['job']} ({','.join(f'{k}={r.get(k)}' for k in varying)}): {r['error']}"
                               for r in failed(rows))
            print(f"error: {len(failed(rows))} of {len(rows)} sweep jobs failed: {listed}", file=sys.stderr, flush=True)
            sys.exit(1)
