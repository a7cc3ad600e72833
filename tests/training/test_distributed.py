"""Data parallel: `torchrun --nproc_per_node 2 lora-train` on this CPU (gloo) trains the same curve as one process with
the same global batch, writes one complete adapter, and launcher settings that contradict the config are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lora_train import UserError, compose, train
from lora_train.model import device_map, shards_weights
from lora_train.training import distributed

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "lora_train.yaml",
                 "metrics.json", "loss.png", "README.md"]

# Global batch 8 = 4 per device x 2 processes x 1, or 4 x 1 process x 2 accumulation: the same examples per step.
# Random order (not length-grouped: that sampler's mega-batches scale with accumulation) and no dropout make the two
# runs see identical batches, so their training losses must agree closely.
SAME_GLOBAL_BATCH = ["experiment=debug", "lora.dropout=0", "train.per_device_batch_size=4",
                     "train.global_batch_size=8", "train.group_by_length=false", "data.max_length=64"]


def losses(folder: Path, key: str) -> list[tuple[int, float]]:
    history = json.loads((folder / "metrics.json").read_text())["history"]
    return [(h["step"], h[key]) for h in history if key in h]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    adapters = tmp_path / "adapters"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    # run_name differs per rank on purpose: every rank must still use rank 0's name (one folder, no strays).
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(Path(sys.executable).with_name("lora-train")),
         *SAME_GLOBAL_BATCH, f"adapters_dir={adapters}", "run_name=rank${oc.env:RANK}", "train.save_steps=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=400, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes:  2 on 1 node(s), backend gloo (torchrun)" in proc.stdout
    assert "8 per optimizer step = 4 per device x 2 process(es) x 1 accumulation" in proc.stdout
    assert sorted(p.name for p in adapters.iterdir()) == ["rank0"], "one folder, no per-rank work or staging folder"
    two = adapters / "rank0"
    for name in ADAPTER_FILES:
        assert (two / name).is_file(), name
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 8

    one = train(compose("train", [*SAME_GLOBAL_BATCH, f"adapters_dir={adapters}", "run_name=one"]))
    assert json.loads((one / "metrics.json").read_text())["world_size"] == 1
    one_train, two_train = losses(one, "loss"), losses(two, "loss")
    assert [s for s, _ in one_train] == [s for s, _ in two_train] == [1, 2, 3, 4]
    for (step, a), (_, b) in zip(one_train, two_train):
        assert abs(a - b) < 2e-3, f"step {step}: 1 process {a:.5f}, 2 processes {b:.5f}"
    # Evaluation splits 3 rows over 2 processes and averages per batch, so it agrees less tightly.
    for (step, a), (_, b) in zip(losses(one, "eval_loss"), losses(two, "eval_loss")):
        assert abs(a - b) / a < 0.01, f"eval at step {step}: {a:.5f} vs {b:.5f}"


def recipe(*overrides: str):
    return OmegaConf.to_object(compose("train", ["experiment=gpt4all_j_lora_6b", *overrides]))


def test_deepspeed_accumulation_that_breaks_the_global_batch_is_refused():
    job = recipe()  # global 256 = 8 per device x 8 processes x 4
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"}
    with pytest.raises(UserError, match=r"gradient_accumulation_steps=1.*needs 4"):
        distributed.check_launcher_env(job, 8, env)
    distributed.check_launcher_env(job, 8, {**env, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})
    distributed.check_launcher_env(job, 8, {**env, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "auto"})


def test_launcher_mixed_precision_cannot_switch_on_autocast_behind_a_float32_config():
    job = recipe("quant.compute_dtype=float32")
    with pytest.raises(UserError, match="quant.compute_dtype"):
        distributed.check_launcher_env(job, 1, {"ACCELERATE_MIXED_PRECISION": "bf16"})
    distributed.check_launcher_env(job, 1, {"ACCELERATE_MIXED_PRECISION": "no"})


def test_sharded_engines_place_the_weights_themselves():
    assert shards_weights({"ACCELERATE_USE_FSDP": "true"})
    assert shards_weights({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    assert not shards_weights({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"})
    assert device_map({"ACCELERATE_USE_FSDP": "true", "LOCAL_RANK": "1"}) is None
    assert distributed.launcher({"TORCHELASTIC_RUN_ID": "x"}) == "torchrun"
    assert distributed.launcher({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                                 "ACCELERATE_MIXED_PRECISION": "bf16"}) == "accelerate launch, DeepSpeed ZeRO-3"
