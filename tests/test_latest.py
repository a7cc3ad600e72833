"""`latest`: every command that takes adapters resolves it to the newest finished adapter in adapters_dir, so the
README's examples chain after the quickstart whatever run name it chose; `latest` itself is no run name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lora_train import UserError, compose
from lora_train.adapters import LATEST, finished_adapters, latest_name, resolve_latest


def fake_adapter(root: Path, name: str, mtime: float, weights: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"")
    os.utime(folder / "adapter_config.json", (mtime, mtime))
    return folder


def test_latest_is_the_newest_finished_adapter_and_nothing_half_written(tmp_path):
    fake_adapter(tmp_path, "old", 1_000)
    new = fake_adapter(tmp_path, "new", 2_000)
    fake_adapter(tmp_path, ".run.work", 3_000)  # a run's checkpoints
    fake_adapter(tmp_path, ".run.staging-x1", 3_000)  # an adapter being written
    fake_adapter(tmp_path, "no-weights", 3_000, weights=False)
    (tmp_path / "notes.txt").write_text("not an adapter")
    assert [f.name for f in finished_adapters(tmp_path)] == ["old", "new"]
    assert resolve_latest(LATEST, tmp_path, "adapter") == str(new)
    assert latest_name(LATEST, tmp_path) == "new"
    assert resolve_latest("adapters/run-a", tmp_path, "adapter") == "adapters/run-a"  # anything else unchanged
    assert latest_name("base", tmp_path) == "base"


@pytest.mark.parametrize("command,overrides,key", [
    ("merge", ["adapter=latest", "output=merged/x"], "adapter"),
    ("merge", ["adapters=[latest,latest]", "output=combined"], "adapters"),
    ("eval", ["adapters=[latest]", "eval.tasks=[]"], "adapters"),
    ("generate", ["adapters=[latest]", "prompt=hi"], "adapters"),
])
def test_latest_with_no_adapter_is_one_clear_error_before_any_model_loads(tmp_path, command, overrides, key):
    from lora_train import evaluate, generate, merge

    run = {"merge": merge, "eval": evaluate, "generate": generate}[command]
    empty = tmp_path / "adapters"
    empty.mkdir()
    cfg = compose(command, overrides + [f"adapters_dir={empty}", f"output={tmp_path / 'out'}"]
                  if command != "generate" else overrides + [f"adapters_dir={empty}"])
    with pytest.raises(UserError, match=rf"^{key}: 'latest' means the newest finished adapter in adapters_dir=.*"
                                        r"holds none; train one first"):
        run(cfg)


def test_latest_is_reserved_as_a_run_name(tmp_path):
    from lora_train import train

    with pytest.raises(UserError, match=r"^run_name=latest: 'latest' is reserved"):
        train(compose("train", ["run_name=latest", f"adapters_dir={tmp_path}", "dry_run=true"]))
    assert not any(tmp_path.iterdir())
