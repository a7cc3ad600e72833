"""Quiet by default: every command's --help and dry run print no warning, the one FutureWarning we filter is the
only one a short training run meets, DeepSpeed's import notice stays out unless a DeepSpeed launcher is used, and
the Trainer's records are aligned numbers."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

WARNING_LINE = re.compile(r"WARNING|Warning")
COMMANDS = ["lora-train", "lora-data", "lora-merge", "lora-generate", "lora-serve", "lora-eval"]


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if WARNING_LINE.search(line)]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_a_dry_run_print_no_warning_line(command, tmp_path):
    help_ = run_cli(command, "--help", cwd=tmp_path)
    assert help_.returncode == 0 and "== Config ==" in help_.stdout, help_.stderr[-2000:]
    assert warning_lines(help_.stderr) == [], help_.stderr
    dry = run_cli(command, *(["dry_run=true"] if command == "lora-train" else ["--cfg", "job"]), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert warning_lines(dry.stderr) == [], dry.stderr
    if command == "lora-train":
        assert dry.stdout.startswith("dry run: nothing will be trained\nmodel:"), dry.stdout[:500]


def _in_fresh_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


DEEPSPEED_NOTICE = ("import logging, lora_train\n"
                    "logging.getLogger('DeepSpeed').addHandler(logging.StreamHandler())\n"
                    "logging.getLogger('DeepSpeed').warning('Setting accelerator to CPU. If you have GPU or other "
                    "accelerator, we were unable to detect it.')\n"
                    "logging.getLogger('DeepSpeed').warning('another DeepSpeed warning')\n")


def test_deepspeeds_accelerator_notice_is_dropped_unless_a_deepspeed_launcher_is_used():
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_DEEPSPEED", "DS_ACCELERATOR")}
    quiet = subprocess.run([sys.executable, "-c", DEEPSPEED_NOTICE], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "Setting accelerator" not in quiet.stderr and "another DeepSpeed warning" in quiet.stderr
    launched = _in_fresh_python(DEEPSPEED_NOTICE, ACCELERATE_USE_DEEPSPEED="true")
    assert "Setting accelerator to CPU" in launched.stderr


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_importing_deepspeed_prints_no_accelerator_notice():
    proc = _in_fresh_python("import lora_train, deepspeed\nfrom deepspeed.accelerator import get_accelerator\n"
                            "get_accelerator()", CUDA_VISIBLE_DEVICES="")
    assert "Setting accelerator" not in proc.stdout + proc.stderr


def test_the_filter_drops_exactly_the_gradient_checkpointing_futurewarning():
    proc = _in_fresh_python(
        "import warnings, lora_train\nwarnings.simplefilter('error', FutureWarning)\n"
        "warnings.filterwarnings('ignore', message='x^', category=FutureWarning)\n"  # any later filter stays below
        "lora_train.console.quiet()\n"
        "warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6.', FutureWarning)\n"
        "try:\n    warnings.warn('`something_else` is deprecated', FutureWarning)\nexcept FutureWarning:\n"
        "    print('other warnings still raise')\n")
    assert proc.returncode == 0 and "other warnings still raise" in proc.stdout, proc.stderr


@pytest.mark.slow  # a real two-step training run in a fresh process
def test_a_two_step_train_meets_no_future_warning_but_the_filtered_one(tmp_path, model_cache):
    # The installed console script, run by this interpreter so that -W applies from the first import on.
    exe = [sys.executable, "-W", "error::FutureWarning", str(Path(sys.executable).with_name("lora-train"))]
    proc = subprocess.run(exe + ["experiment=debug", "train.max_steps=2", "train.eval_steps=1", "run_name=w"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert warning_lines(proc.stderr) == [], proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith("model:"), out[:3]  # the plan first: nothing printed before it
    records = [line for line in out if line.startswith("step ")]
    assert records and all("{" not in line and "'" not in line for line in records), records
    columns = {line.index("train loss") for line in records if "train loss" in line}
    assert len(columns) == 1, records  # aligned
    evals = [line for line in records if "eval loss" in line]
    assert evals and all(re.search(r"eval loss +\d+\.\d{4}$", line) for line in evals), evals
    assert "note: builtin:tiny-gptj is a tiny model with random weights" in proc.stdout
    assert "lora-train experiment=smollm2_sample run_name=smollm2-sample" in proc.stdout
    assert (tmp_path / "adapters" / "w" / "adapter_config.json").is_file()
    assert "\r" not in proc.stderr  # no progress bar: stderr is a pipe here, not a terminal


def test_a_flags_value_is_not_taken_for_an_override():
    from lora_train.config import command_line_overrides

    assert command_line_overrides(["adapters=[a]", "--cfg", "job", "-p", "model", "--help", "x=1"]) == [
        "adapters=[a]", "x=1"]
