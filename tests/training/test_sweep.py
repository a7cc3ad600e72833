"""Hydra multirun: a grid sweep trains every combination into its own adapter folder and ends with a summary table;
the Optuna preset minimises the eval loss each run returns; the Slurm preset composes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import need_module, run_cli
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from lora_train.training import sweep

# One optimizer step on 32 short rows: each run of a sweep takes seconds.
TINY = ["experiment=debug", "data.max_rows=40", "data.max_length=32", "data.val_fraction=0.1",
        "train.max_steps=1", "train.per_device_batch_size=4", "train.global_batch_size=4"]


def summary_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_grid_sweep_trains_every_combination_into_its_own_folder_and_summarises(tmp_path):
    proc = run_cli("lora-train", "-m", *TINY, "lora.r=8,16", "train.learning_rate=1e-4,2e-5",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folders = sorted(p for p in (tmp_path / "adapters").iterdir())
    assert len(folders) == 4 and not any(p.name.startswith(".") for p in folders), folders
    # Every run trained with its own settings (read back from what it saved, not from its name).
    trained = set()
    for folder in folders:
        assert (folder / "adapter_model.safetensors").is_file()
        saved = yaml.safe_load((folder / "lora_train.yaml").read_text())
        trained.add((saved["lora"]["r"], saved["train"]["learning_rate"]))
    assert trained == {(8, 1e-4), (8, 2e-5), (16, 1e-4), (16, 2e-5)}
    # The default run_name's timestamp is the sweep's: one sweep's adapters sort together.
    assert len({p.name.split("-experiment=")[0].rsplit("-", 1)[0] for p in folders}) == 1

    rows = summary_rows(tmp_path / "sweep")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    for row in rows:
        metrics = json.loads((tmp_path / row["adapter"]).joinpath("metrics.json").read_text())
        assert float(row["eval_loss"]) == pytest.approx(metrics["eval_loss"])
        assert (int(row["lora.r"]), float(row["train.learning_rate"])) == (
            metrics["config"]["lora"]["r"], metrics["config"]["train"]["learning_rate"])
    md = (tmp_path / "sweep" / "summary.md").read_text()
    assert "| job | lora.r | train.learning_rate | train_loss | eval_loss |" in md
    assert "settings of every run: experiment=debug" in md and "best eval loss: job" in md
    assert md.strip() in proc.stdout  # the table is also printed when the sweep ends


def test_optuna_preset_minimises_the_eval_loss_each_run_returns(tmp_path):
    """A search space with a clear winner: three steps at learning rate 5e-2 lower the eval loss by ~0.3, at 1e-7 they
    leave it where it started. Four trials (the seeded TPE sampler tries both); the study's best is the winner."""
    need_module("hydra_plugins.hydra_optuna_sweeper", "sweep")
    args = [a for a in TINY if not a.startswith("train.max_steps=")] + ["train.max_steps=3"]
    proc = run_cli("lora-train", "-m", "sweep=optuna", *args, "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.params={lora.r: 'choice(8)', lora.alpha: 'choice(16)', "
                   "train.learning_rate: 'choice(1e-7, 5e-2)'}",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = summary_rows(tmp_path / "sweep")
    assert len(rows) == 4 and {r["train.learning_rate"] for r in rows} == {"1e-07", "0.05"}, rows
    loss = {r["train.learning_rate"]: float(r["eval_loss"]) for r in rows}
    assert loss["0.05"] < loss["1e-07"] - 0.1, loss  # the space has a clear winner
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_params"]["train.learning_rate"] == pytest.approx(5e-2), best
    assert best["best_value"] == pytest.approx(min(float(r["eval_loss"]) for r in rows))  # what the runs returned


def test_a_job_failing_with_a_user_error_is_recorded_and_the_sweep_goes_on(tmp_path):
    # lora.r=0 is refused before anything loads (a user error, exit status 2 on its own); lora.r=8 trains.
    proc = run_cli("lora-train", "-m", *TINY, "lora.r=0,8", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
                   timeout=400)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^error: job 0 \(experiment=debug .*lora\.r=0\): lora\.r=0 is out of range$", proc.stderr, re.M)
    assert "error: 1 of 2 sweep jobs failed: job 0 (lora.r=0): lora.r=0 is out of range" in proc.stderr
    assert "Traceback" not in proc.stderr
    (adapter,) = (tmp_path / "adapters").iterdir()  # the other job ran
    assert yaml.safe_load((adapter / "lora_train.yaml").read_text())["lora"]["r"] == 8
    failed, ok = summary_rows(tmp_path / "sweep")
    assert (failed["job"], failed["status"], failed["lora.r"]) == ("0", "failed", "0")
    assert failed["error"] == "lora.r=0 is out of range" and not failed["adapter"]
    assert (ok["job"], ok["status"], ok["lora.r"], ok["error"]) == ("1", "ok", "8", "")
    assert float(ok["eval_loss"]) > 0 and (tmp_path / ok["adapter"] / "adapter_model.safetensors").is_file()
    md = (tmp_path / "sweep" / "summary.md").read_text()
    assert "| 0 | failed | 0 |" in md and "failed: 1 of 2 jobs (job 0)" in md and "best eval loss: job 1" in md


def test_optuna_tells_a_failed_trial_as_failed_and_goes_on(tmp_path):
    need_module("hydra_plugins.hydra_optuna_sweeper", "sweep")
    # Only lora.r varies; the preset's seeded TPE sampler draws lora.r=8 for the first trial, lora.r=0 for the second.
    proc = run_cli("lora-train", "-m", "sweep=optuna", *TINY, "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.params={lora.r: 'choice(0, 8)', lora.alpha: 'choice(16)', "
                   "train.learning_rate: 'choice(1e-4)'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   cwd=tmp_path, timeout=400)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = summary_rows(tmp_path / "sweep")
    assert {(r["lora.r"], r["status"]) for r in rows} == {("8", "ok"), ("0", "failed")}
    assert "Failed experiment: Return value must be float-castable. Got 'failed: lora.r=0 is out of range'" in \
        proc.stdout + proc.stderr  # Optuna's sweeper told the trial as failed, with the job's error
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    ok = next(r for r in rows if r["status"] == "ok")
    assert best["best_params"]["lora.r"] == 8 and best["best_value"] == pytest.approx(float(ok["eval_loss"]))
    assert "error: 1 of 2 sweep jobs failed: job 1 (lora.r=0): lora.r=0 is out of range" in proc.stderr


def test_optuna_sweep_whose_every_trial_fails_ends_with_the_errors_not_a_traceback(tmp_path):
    need_module("hydra_plugins.hydra_optuna_sweeper", "sweep")
    proc = run_cli("lora-train", "-m", "sweep=optuna", *TINY, "hydra.sweeper.n_trials=2",
                   f"data.source={tmp_path / 'missing.jsonl'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   cwd=tmp_path, timeout=400)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [r["status"] for r in summary_rows(tmp_path / "sweep")] == ["failed", "failed"]
    assert "error: 2 of 2 sweep jobs failed" in proc.stderr and "missing.jsonl" in proc.stderr


def test_summary_of_jobs_that_ended_differently():
    rows = [{"job": 0, "status": "failed", "lora.r": "0", "error": "lora.r=0 is out of range | see\nthe docs"},
            {"job": 1, "status": "ok", "lora.r": "8", "eval_loss": 2.5, "adapter": "adapters/x"}]
    cols = sweep._columns(rows)
    assert cols[:3] == ["job", "status", "lora.r"] and cols[-2:] == ["adapter", "error"]
    md = sweep.markdown(rows, cols)
    assert "| lora.r=0 is out of range \\| see the docs |" in md  # one cell: no line break, no column split
    assert md.rstrip().endswith("failed: 1 of 2 jobs (job 0); their errors are in the table")
    # A Failed value is what Optuna's sweeper converts: it raises with the job's error.
    with pytest.raises(ValueError, match="out of range"):
        float(sweep.Failed("lora.r=0 is out of range"))


def test_a_job_that_crashed_is_in_the_summary_written_after_it(tmp_path):
    """A job failing with something other than a user error (a bug, out of memory) is listed too, and the summary
    exists as soon as a job ends, even if the sweeper then stops the sweep."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    def config(num: int, r: str):
        return OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path / str(num))}, "job": {"num": num},
                                           "overrides": {"task": [f"lora.r={r}"]}, "sweep": {"dir": str(tmp_path)}}})

    callback = sweep.SweepSummary()
    (tmp_path / "0").mkdir()
    callback.on_job_end(config(0, "4"), JobReturn(status=JobStatus.FAILED, _return_value=MemoryError("out of RAM")))
    assert summary_rows(tmp_path)[0]["error"] == "MemoryError: out of RAM"
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / sweep.RECORD).write_text(json.dumps({"num": 1, "overrides": ["lora.r=0"], "status": "failed",
                                                            "error": "lora.r=0 is out of range"}))
    callback.on_job_end(config(1, "0"), JobReturn(status=JobStatus.COMPLETED, _return_value=sweep.Failed("x")))
    assert [(r["job"], r["status"], r["error"]) for r in summary_rows(tmp_path)] == [
        ("0", "failed", "MemoryError: out of RAM"), ("1", "failed", "lora.r=0 is out of range")]
    with pytest.raises(SystemExit) as stop:
        callback.on_multirun_end(config(1, "0"))
    assert stop.value.code == 1


def compose_hydra(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module("lora_train.conf", version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=True)


def test_optuna_preset_composes_a_minimising_study():
    need_module("hydra_plugins.hydra_optuna_sweeper", "sweep")
    cfg = compose_hydra("sweep=optuna", "experiment=gpt4all_j_lora_6b")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert str(cfg.hydra.sweeper.direction).endswith("minimize")
    assert set(cfg.hydra.sweeper.params) == {"lora.r", "lora.alpha", "train.learning_rate"}


def test_slurm_preset_composes_one_gpu_jobs():
    need_module("hydra_plugins.hydra_submitit_launcher", "slurm")
    cfg = compose_hydra("launcher=slurm", "experiment=gpt4all_j_lora_6b", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (1, 1, "gpu")
    assert launcher.submitit_folder.startswith(str(cfg.hydra.sweep.dir))  # logs stay next to the sweep's summary


def test_folder_suffix_is_a_safe_unique_name():
    assert sweep.folder_suffix(3, ["lora.r=8", "run_name=x", "data.source=/a/b.jsonl"]) == \
        "3-lora.r=8,data.source=_a_b.jsonl"
    long = sweep.folder_suffix(0, [f"+train.sft_args.k{i}=value{i}" for i in range(20)])
    assert len(long) < 130 and long != sweep.folder_suffix(0, [f"+train.sft_args.k{i}=value{i}" for i in range(19)])
    assert sweep.folder_suffix(5, []) == "5"
