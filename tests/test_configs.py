"""Every shipped config composes and validates; bad overrides fail at compose time, naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from lora_train import compose
from lora_train.schemas import QuantMode, TrainJob

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "quant", "lora", "data", "train", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_shipped_config_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "jsonl"):
        overrides.append("data.source=rows.jsonl")  # that preset requires the user to name the file
    job = OmegaConf.to_object(compose("train", overrides))
    assert isinstance(job, TrainJob)


def test_every_config_file_says_how_to_run_it():
    for path in CONF.rglob("*.yaml"):
        lines = [x for x in path.read_text().splitlines() if x != "# @package _global_"]
        first = lines[0]
        assert re.match(r"# .*(lora-(train|data|merge|generate|serve|eval)|accelerate launch)", first), \
            f"{path} should start with a comment giving the command that uses it"


def test_gpt4all_j_recipe_has_the_model_card_numbers():
    job = OmegaConf.to_object(compose("train", ["experiment=gpt4all_j_lora_6b"]))
    assert job.model.name_or_path == "EleutherAI/gpt-j-6b"
    assert job.quant.mode == QuantMode.nf4 and job.quant.double_quant
    assert job.quant.compute_dtype.value == "bfloat16"
    assert (job.lora.r, job.lora.alpha, job.lora.dropout) == (8, 32, 0.1)
    assert job.lora.target_modules == ["q_proj", "v_proj"]
    assert job.data.source == "nomic-ai/gpt4all-j-prompt-generations" and job.data.val_fraction == 0.05
    assert job.data.max_length == 1024
    t = job.train
    assert (t.learning_rate, t.lr_scheduler, t.warmup_steps, t.weight_decay, t.epochs) == (2e-5, "cosine", 500, 0.0, 2)
    assert t.global_batch_size == 256 and t.gradient_checkpointing == "auto"  # on where 1024 tokens need it
    assert job.seed == 42


def test_gpt4all_j_log_preset_has_the_training_logs_lora_settings():
    """experiment=gpt4all_j_lora_6b_log: TRAINING_LOG.md's LoRA run (docs/train.md cites the file behind each number);
    everything but the batch and the schedule is the recipe's."""
    import torch
    from transformers import get_scheduler

    log = OmegaConf.to_object(compose("train", ["experiment=gpt4all_j_lora_6b_log"]))
    card = OmegaConf.to_object(compose("train", ["experiment=gpt4all_j_lora_6b"]))
    t = log.train
    assert (t.per_device_batch_size, t.global_batch_size, t.learning_rate) == (4, 32, 2e-5)
    assert (t.lr_scheduler, t.warmup_steps, t.epochs, t.weight_decay, t.max_grad_norm) == \
        ("constant_with_warmup", 500, 2, 0.0, 1.0)
    assert (log.model, log.quant, log.lora, log.data, log.seed) == \
        (card.model, card.quant, card.lora, card.data, card.seed)
    # transformers' constant_with_warmup is DeepSpeed's WarmupLR (warmup_type linear, warmup_min_lr 0): from 0 to the
    # learning rate over the warmup steps, then flat for good
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=t.learning_rate)
    sched = get_scheduler(t.lr_scheduler, opt, num_warmup_steps=t.warmup_steps, num_training_steps=20_000)
    lrs = {}
    for step in range(10_001):
        lrs[step] = sched.get_last_lr()[0]
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[250] == pytest.approx(1e-5) and lrs[500] == lrs[10_000] == pytest.approx(2e-5)


@pytest.mark.parametrize("revision", ["v1.0", "v1.1-breezy", "v1.2-jazzy", "v1.3-groovy"])
def test_dataset_revision_is_selectable(revision):
    job = OmegaConf.to_object(compose("train", ["experiment=gpt4all_j_lora_6b", f"data.revision={revision}"]))
    assert job.data.revision == revision


@pytest.mark.parametrize("override,error,message,reason", [
    ("lora.r=abc", ConfigCompositionException, "Error merging override lora.r=abc",
     "Value 'abc' of type 'str' could not be converted to Integer"),
    ("quant.mode=nf5", ConfigCompositionException, "Error merging override quant.mode=nf5",
     "Invalid value 'nf5', expected one of [nf4, fp4, int8, none]"),
    ("train.learning_rat=1e-4", ConfigCompositionException, "Could not override 'train.learning_rat'", None),
    ("model=gptj_7b", MissingConfigException, "Could not find 'model/gptj_7b'", None),
])
def test_invalid_override_is_rejected_naming_the_key(override, error, message, reason):
    with pytest.raises(error, match=re.escape(message)) as err:
        OmegaConf.to_object(compose("train", [override]))
    assert type(err.value) is error
    if reason:  # the cause carries the reason and the full key
        assert reason in str(err.value.__cause__) and f"full_key: {override.split('=')[0]}" in str(err.value.__cause__)


@pytest.mark.parametrize("override,expected", [
    ("lora.r=abc", "lora.r"),
    ("quant.mode=nf5", "expected one of [nf4, fp4, int8, none]"),
    ("bogus=1", "bogus"),
])
def test_cli_rejects_bad_override_without_traceback(tmp_path, override, expected):
    proc = run_cli("lora-train", override, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "adapters").exists()
