"""Shared test setup: no network, a private model cache, and one trained adapter reused by several tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach a hub: the tiny model and the data are built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# .ci/run sets this: there, a test that would skip for want of an optional package or a browser fails instead, so CI
# can never pass by skipping. On a developer's machine such tests skip with the reason printed.
STRICT_SKIPS = os.environ.get("LORA_TRAIN_STRICT_SKIPS") == "1"


def need(available: bool, reason: str) -> None:
    """Skip the calling test (fail it under LORA_TRAIN_STRICT_SKIPS=1) when something it needs is missing."""
    if available:
        return
    if STRICT_SKIPS:
        pytest.fail(f"required here (LORA_TRAIN_STRICT_SKIPS=1): {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)  # also at a test module's top, before its imports


def need_module(name: str, extra: str):
    """The imported module, or a skip (a failure in CI) naming the extra that provides it."""
    import importlib.util

    need(importlib.util.find_spec(name) is not None, f"needs {name}: pip install -e '.[{extra}]'")
    return __import__(name)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip where there is no CUDA GPU, also under LORA_TRAIN_STRICT_SKIPS=1: a GPU is hardware,
    not a package CI could install."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu:
        item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)"))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """A fresh cache for the tiny GPT-J, so the tests also prove it builds from nothing."""
    if "LORA_TRAIN_CACHE" not in os.environ:
        os.environ["LORA_TRAIN_CACHE"] = str(tmp_path_factory.mktemp("lora_train_cache"))
    return Path(os.environ["LORA_TRAIN_CACHE"])


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script the way a user would (through the installed entry point)."""
    exe = Path(sys.executable).with_name(args[0])
    return subprocess.run([str(exe), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, model_cache) -> Path:
    """`lora-train` exactly as the README's quickstart runs it (the embedded default), in a scratch folder."""
    work = tmp_path_factory.mktemp("quickstart")
    proc = run_cli("lora-train", cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folders = [p for p in (work / "adapters").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and folders[0].name.startswith("tiny-gptj-sample-"), folders
    return folders[0]
