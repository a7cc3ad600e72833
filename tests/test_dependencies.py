"""Declared dependencies: every import is declared (checked by deptry, not by hand), the installed versions are the
declared ones, and the private APIs of transformers, TRL, PEFT and accelerate that the code relies on still exist."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need, need_module

ROOT = Path(__file__).resolve().parents[1]


def deptry(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    need_module("deptry", "dev")
    return subprocess.run([sys.executable, "-m", "deptry", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, NO_COLOR="1"))


def sibling_modules() -> list[str]:
    """Modules of tests/ and benchmarks/ that their neighbours import by name (conftest, helpers, one benchmark
    importing another): first-party code, not packages to declare."""
    found = {p.stem for folder in ("tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")}
    return sorted(found - {"__init__"})


def test_every_import_is_declared_and_every_declaration_used():
    first_party = [a for m in ["lora_train", "hydra_plugins", *sibling_modules()] for a in ("--known-first-party", m)]
    proc = deptry(".", "--no-ansi", *first_party)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "No dependency issues found" in proc.stdout + proc.stderr


def test_the_package_imports_no_package_that_only_the_dev_extra_declares():
    """lora_train/ may import its dependencies and the user-facing extras (serve, eval, ...), never a package that
    only the dev extra brings (pytest, hypothesis, openai, ...): a user's install would not have it."""
    proc = deptry("lora_train", "hydra_plugins", "--no-ansi", "--optional-dependencies-dev-groups", "dev",
                  "--ignore", "DEP002")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_the_check_catches_an_undeclared_a_transitive_and_a_dev_only_import(tmp_path):
    """The same configuration on a copy holding three bad imports: each is reported by name."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "lora_train").mkdir()
    (tmp_path / "lora_train" / "bad.py").write_text("import hypothesis\nimport numpy\nimport filelock\n"
                                                    "import no_such_package_anywhere\n")
    proc = deptry("lora_train", "--no-ansi", "--optional-dependencies-dev-groups", "dev", "--ignore", "DEP002",
                  cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "DEP004 'hypothesis' imported but declared as a dev dependency" in out
    assert "DEP003 'filelock' imported but it is a transitive dependency" in out
    assert "DEP001 'no_such_package_anywhere' imported but missing" in out
    assert "'numpy'" not in out  # declared: no finding


def _requirements() -> list[tuple[str, str]]:
    """(distribution, specifier) for the dependencies and every extra of pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed metadata holds the same lists
        return [(m.group(1), m.group(3)) for m in (re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*([^;]*).*", r)
                for r in importlib.metadata.requires("lora-train") or [])]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    out = []
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", req.strip())
        out.append((m.group(1), m.group(3)))
    return out


# deepspeed, the GPU-only extra, is left out: the dev extra does not install it, so its range is never tested here.
@pytest.mark.parametrize("dist,spec", sorted({(d, s) for d, s in _requirements() if d != "deepspeed"}))
def test_installed_version_is_in_the_declared_range(dist, spec):
    """The tests run against the versions pyproject.toml declares: a cap that the environment already exceeds (or a
    floor it is below) would make the declared range untested."""
    from packaging.specifiers import SpecifierSet

    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        need(False, f"{dist} is not installed: pip install -e '.[dev]'")
    assert SpecifierSet(spec).contains(version, prereleases=True), (
        f"{dist} {version} is installed but pyproject.toml declares {dist}{spec}")


# --- private APIs the code relies on: each test names the API and who uses it, so an upgrade that drops it fails
# here, loudly, instead of silently taking a slower path or failing mid-run.
def _gone(api: str, user: str) -> str:
    return (f"{api} is gone or changed in this version; {user} relies on it: port that code, then move the version "
            f"cap in pyproject.toml")


def test_transformers_can_set_attn_implementation_accepts_gptj():
    from transformers import GPTJForCausalLM, PreTrainedModel

    api = "transformers.PreTrainedModel._can_set_attn_implementation"
    assert callable(getattr(PreTrainedModel, "_can_set_attn_implementation", None)), _gone(
        api, "lora_train/training/segments.py (per-example attention for packed batches)")
    # The padding-free packed layout needs GPT-J to take a registered attention function; without it training falls
    # back to the slower block-diagonal mask.
    assert GPTJForCausalLM._can_set_attn_implementation() is True, _gone(api, "lora_train/training/segments.py")


def test_transformers_config_attn_implementation():
    from transformers import GPTJConfig

    cfg = GPTJConfig(n_layer=1, n_embd=32, n_head=4, rotary_dim=8, vocab_size=64, attn_implementation="eager")
    assert getattr(cfg, "_attn_implementation", None) == "eager", _gone(
        "transformers.PretrainedConfig._attn_implementation",
        "lora_train/training/packing.py and segments.py (which attention the model runs)")


def test_transformers_get_keys_to_not_convert():
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    api = "transformers.quantizers.base.get_keys_to_not_convert"
    user = "lora_train/merging/base_weights.py (which weights training quantized)"
    try:
        from transformers.quantizers.base import get_keys_to_not_convert
    except ImportError as e:
        pytest.fail(f"{_gone(api, user)} ({e})", pytrace=False)
    with torch.device("meta"):
        model = GPTJForCausalLM(GPTJConfig(n_layer=1, n_embd=32, n_head=4, rotary_dim=8, vocab_size=64))
    keys = get_keys_to_not_convert(model)  # the output head stays unquantized; every block's Linear is quantized
    assert "lm_head" in keys and not any(k.startswith("transformer.h.") for k in keys), _gone(api, user)


def test_sft_config_has_a_checkpointing_field():
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    assert names & {"activation_checkpointing", "gradient_checkpointing"}, _gone(
        "trl.SFTConfig.activation_checkpointing / gradient_checkpointing",
        "lora_train/training/train.py (train.gradient_checkpointing)")
    for field in ("max_length", "packing", "padding_free", "completion_only_loss", "use_cpu"):
        assert field in names, _gone(f"trl.SFTConfig.{field}", "lora_train/training/train.py")


def test_peft_get_pattern_key():
    api = "peft.utils.other.get_pattern_key"
    user = "lora_train/merging/base_weights.py (per-module alpha of an adapter with alpha_pattern)"
    try:
        from peft.utils.other import get_pattern_key
    except ImportError as e:
        pytest.fail(f"{_gone(api, user)} ({e})", pytrace=False)
    assert get_pattern_key(["v_proj", "q_proj"], "transformer.h.0.attn.q_proj") == "q_proj", _gone(api, user)
    assert get_pattern_key(["v_proj"], "transformer.h.0.attn.q_proj") == "transformer.h.0.attn.q_proj", _gone(api, user)


def test_accelerate_launch_internals_used_by_the_preset_tests():
    api = "accelerate.commands.launch._validate_launch_command"
    try:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser  # noqa: F401
    except ImportError as e:
        pytest.fail(f"{_gone(api, 'tests/training/test_accelerate_presets.py')} ({e})", pytrace=False)


@pytest.mark.parametrize("module,name,user", [
    ("peft.utils.integrations", "dequantize_module_weight", "lora_train/training/init.py (LoftQ / PiSSA on a 4-bit base)"),
    ("peft.tuners.lora", "LoraLayer", "lora_train/training/init.py"),
    ("peft.optimizers", "create_loraplus_optimizer", "lora_train/training/init.py (train.loraplus_lr_ratio)"),
    ("transformers.trainer_utils", "SchedulerType", "lora_train/training/plan.py (train.lr_scheduler names)"),
    ("transformers.training_args", "OptimizerNames", "lora_train/training/plan.py (train.optim names)"),
])
def test_names_imported_from_library_submodules_still_exist(module, name, user):
    import importlib

    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as e:
        found = None
        module = f"{module} ({e})"
    assert found is not None, _gone(f"{module}.{name}", user)


def test_bitsandbytes_params4bit_rebuilt_from_its_own_settings():
    """lora_train/training/init.py set_base() rebuilds a 4-bit weight as type(param)(w, requires_grad=False,
    blocksize=..., compress_statistics=..., quant_type=..., quant_storage=..., module=...): Params4bit's internal
    keyword arguments. Run the real function on a real CPU Linear4bit and read the weight back."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch

    from lora_train.training.init import set_base

    api, user = "bitsandbytes.nn.Params4bit(data, blocksize=, compress_statistics=, quant_type=, quant_storage=, " \
        "module=)", "lora_train/training/init.py set_base (PiSSA, OLoRA, LoftQ on a 4-bit base)"
    linear = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compute_dtype=torch.float32).to("cpu")

    class Layer:  # what set_base reads of a PEFT LoRA layer
        def get_base_layer(self):
            return linear

    w = torch.randn(64, 64)
    try:
        set_base(Layer(), w)
    except TypeError as e:
        raise AssertionError(_gone(api, user)) from e
    param = linear.weight
    assert type(param).__name__ == "Params4bit" and param.quant_state is not None, _gone(api, user)
    assert (param.quant_type, param.blocksize) == ("nf4", 64), _gone(api, user)
    back = F.dequantize_4bit(param.data, param.quant_state).float()
    assert back.shape == w.shape and (back - w).abs().mean() < 0.2 * w.abs().mean(), _gone(api, user)


def test_hydra_calls_on_job_end_after_the_job_with_its_failure_in_the_job_return():
    """lora_train/training/sweep.py SweepSummary.on_job_end records a job that raised (a bug) from job_return: Hydra's
    run_job must catch the job's exception into JobReturn (status FAILED) and call on_job_end after the task, and
    return_value must re-raise that exception."""
    import inspect

    from hydra.core import utils
    from hydra.core.utils import JobReturn, JobStatus

    api, user = "hydra.core.utils.run_job (callback order) and JobReturn.return_value", "lora_train/training/sweep.py"
    source = inspect.getsource(utils.run_job)
    task, caught, end = (source.find(s) for s in ("task_function(task_cfg)", "ret.status = JobStatus.FAILED",
                                                  "callbacks.on_job_end("))
    assert -1 < task < caught < end, _gone(api, user)
    failed = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("the job's own error"))
    with pytest.raises(RuntimeError, match="the job's own error"):
        failed.return_value


def test_optuna_sweeper_tells_a_trial_failed_when_its_value_is_not_a_float():
    """lora_train/training/sweep.py returns a Failed value from a job that failed with a user error; float() of it
    raises, and hydra-optuna-sweeper must then tell Optuna the trial FAILED and go on (there is no documented way for
    a job to report a failed trial). Read from the sweeper's source: the float cast inside the block that tells FAIL."""
    import inspect

    need_module("hydra_plugins.hydra_optuna_sweeper", "sweep")
    from hydra_plugins.hydra_optuna_sweeper import _impl

    from lora_train.training.sweep import Failed

    api, user = "hydra_plugins.hydra_optuna_sweeper._impl.OptunaSweeperImpl.sweep", "lora_train/training/sweep.py"
    source = inspect.getsource(_impl.OptunaSweeperImpl.sweep)
    cast, fail, warn = (source.find(s) for s in ("values = [float(ret.return_value)]",
                                                 "state = optuna.trial.TrialState.FAIL", 'log.warning(f"Failed experiment'))
    assert -1 < cast < fail < warn, _gone(api, user)
    with pytest.raises(ValueError, match="lora.r=0 is out of range"):
        float(Failed("lora.r=0 is out of range"))
