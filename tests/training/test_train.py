"""End to end: the embedded default trains a real adapter that plain PEFT loads; bad input fails fast and clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf

from lora_train import UserError, compose, train
from lora_train.schemas import TrainJob

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "lora_train.yaml", "metrics.json", "loss.png", "README.md"]


def quick(tmp_path: Path, *overrides: str) -> list[str]:
    """A few-step run in a scratch adapters folder."""
    return ["experiment=debug", f"adapters_dir={tmp_path / 'adapters'}", "run_name=quick", *overrides]


def test_default_run_writes_a_complete_adapter_folder(trained_adapter):
    for name in ADAPTER_FILES:
        assert (trained_adapter / name).is_file(), name
    assert (trained_adapter / "tensorboard").is_dir()  # report_to defaults to TensorBoard
    leftovers = [p.name for p in trained_adapter.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "staging or work folders must not be left behind"


def test_default_run_loss_falls(trained_adapter):
    m = json.loads((trained_adapter / "metrics.json").read_text())
    evals = [h["eval_loss"] for h in m["history"] if "eval_loss" in h]
    train_losses = [h["loss"] for h in m["history"] if "loss" in h]
    assert len(evals) >= 3 and evals[-1] < evals[0] - 0.1, evals
    assert train_losses[-1] < train_losses[0] - 0.3, train_losses
    assert m["trained_tokens_per_s"] > 0 and m["peak_memory_mib"] > 0 and m["runtime_s"] > 0
    assert m["data"]["source"] == "builtin:sample" and m["data"]["train_rows"] > 300
    assert m["data"]["rows_skipped"] >= 2  # the bundled sample plants rows with an empty response


def test_plain_peft_loads_the_adapter_and_it_changes_the_output(trained_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_train.model import resolve_model

    job = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainJob),
                                              OmegaConf.load(trained_adapter / "lora_train.yaml")))
    base_path = resolve_model(job.model)
    tok = AutoTokenizer.from_pretrained(trained_adapter)
    ids = tok("What is 12 plus 30?\n", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(base_path)
    with torch.no_grad():
        before = base(**ids).logits
    model = PeftModel.from_pretrained(base, trained_adapter)
    with torch.no_grad():
        after = model(**ids).logits
    assert (after - before).abs().max() > 1e-3


def test_model_card_records_base_data_and_hyperparameters(trained_adapter):
    card = (trained_adapter / "README.md").read_text()
    for text in ["base_model:", "builtin:sample", "lora.r", "train.learning_rate", "eval loss", "loss.png"]:
        assert text in card, text


def test_existing_adapter_is_never_overwritten_without_overwrite(tmp_path):
    folder = train(compose("train", quick(tmp_path)))
    before = (folder / "adapter_model.safetensors").read_bytes()
    with pytest.raises(UserError, match="overwrite=true"):
        train(compose("train", quick(tmp_path, "train.learning_rate=1e-2")))
    assert (folder / "adapter_model.safetensors").read_bytes() == before
    train(compose("train", quick(tmp_path, "train.learning_rate=1e-2", "overwrite=true")))
    assert (folder / "adapter_model.safetensors").read_bytes() != before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["quick"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    assert train(compose("train", quick(tmp_path, "dry_run=true"))) is None
    out = capsys.readouterr().out
    assert "trainable" in out and "optimizer steps" in out and "accumulation" in out
    assert not (tmp_path / "adapters").exists()


def test_global_batch_is_reached_by_accumulation(tmp_path, capsys):
    train(compose("train", quick(tmp_path, "dry_run=true", "train.per_device_batch_size=4",
                                 "train.global_batch_size=32")))
    assert "32 per optimizer step = 4 per device x 1 process(es) x 8 accumulation" in capsys.readouterr().out
    with pytest.raises(UserError, match="train.global_batch_size=30"):
        train(compose("train", quick(tmp_path, "dry_run=true", "train.per_device_batch_size=4",
                                     "train.global_batch_size=30")))


@pytest.mark.parametrize("override,message", [
    ("data.source=missing.jsonl", "data.source='missing.jsonl': no such file"),
    ("model.name_or_path=./no/such/model", "model.name_or_path='./no/such/model': no such folder"),
    ("lora.r=0", "lora.r=0 is out of range"),
    ("run_name=../escape", "run_name='../escape'"),
])
def test_bad_paths_and_values_fail_fast_with_the_key(tmp_path, override, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        train(compose("train", quick(tmp_path, override)))
    assert not (tmp_path / "adapters").exists()


def test_cli_user_error_is_one_line_not_a_traceback(tmp_path):
    proc = run_cli("lora-train", "data.source=nope.jsonl", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "error: data.source='nope.jsonl': no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eos_preflight_catches_a_collator_that_masks_eos(tmp_path):
    """A collator that masks padding by token id, with pad == EOS (the original GPT4All-J bug), is refused."""
    from datasets import Dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from lora_train.training.train import check_eos_trained

    eos = 0
    ds = Dataset.from_list([
        {"input_ids": [5, 6, 7, eos], "labels": [-100, -100, 7, eos]},
        {"input_ids": [5, 6, 7, 8, 9, eos], "labels": [-100, -100, 7, 8, 9, eos]},
    ])
    good = DataCollatorForLanguageModeling(pad_token_id=eos)
    check_eos_trained(good, ds, eos)  # masks by position: fine even though pad == EOS

    def masks_pad_ids(examples):
        batch = good([{"input_ids": e["input_ids"]} for e in examples])
        batch["labels"][batch["input_ids"] == eos] = -100
        return batch

    with pytest.raises(UserError, match="masks the EOS label"):
        check_eos_trained(masks_pad_ids, ds, eos)


def test_adapter_folder_is_checked_against_a_base(trained_adapter, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, GPTJConfig, GPTJForCausalLM

    from lora_train.adapters import check_against_config, check_against_model, read_adapter
    from lora_train.model import resolve_model

    info = read_adapter(trained_adapter)
    assert info.job is not None and info.base["model_type"] == "gptj"
    assert {m.rsplit(".", 1)[-1] for m in info.modules} == {"q_proj", "v_proj"}
    base_path = resolve_model(info.job.model)
    check_against_config(info, AutoConfig.from_pretrained(base_path), "the tiny GPT-J")
    check_against_model(info, AutoModelForCausalLM.from_pretrained(base_path), "the tiny GPT-J")

    other = GPTJConfig(vocab_size=1024, n_embd=128, n_layer=4, n_head=4, rotary_dim=16)
    with pytest.raises(UserError, match="hidden_size=256.*has hidden_size=128"):
        check_against_config(info, other, "other-base")
    with pytest.raises(UserError, match="256->256 in the adapter but 128->128 in other-base"):
        check_against_model(info, GPTJForCausalLM(other), "other-base")


def test_broken_adapter_folders_are_named_in_the_error(trained_adapter, tmp_path):
    import shutil

    from lora_train.adapters import read_adapter

    bad = tmp_path / "broken"
    shutil.copytree(trained_adapter, bad)
    (bad / "adapter_config.json").write_text("{nope")
    with pytest.raises(UserError, match="adapter 'broken'.*adapter_config.json is not a JSON object"):
        read_adapter(bad)
    shutil.copy(trained_adapter / "adapter_config.json", bad)
    (bad / "adapter_model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(UserError, match="adapter 'broken'.*unreadable"):
        read_adapter(bad)
    (bad / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="no adapter_model.safetensors"):
        read_adapter(bad)


def test_packed_and_padded_batches_train_the_same_adapter(tmp_path, capsys):
    """Packing (the default) changes the layout, not the learning: same losses step by step, same eval loss."""
    common = ["lora.dropout=0", "train.group_by_length=false"]  # same function and same example order both ways
    runs = {}
    for name, packing in [("packed", "true"), ("padded", "false")]:
        folder = train(compose("train", quick(tmp_path, f"run_name={name}", f"train.packing={packing}", *common)))
        runs[name] = json.loads((folder / "metrics.json").read_text())
    out = capsys.readouterr().out
    assert "packed without padding, per-example attention" in out and "; padded\n" in out
    losses = {k: [h["loss"] for h in m["history"] if "loss" in h] for k, m in runs.items()}
    assert len(losses["packed"]) == 4 and losses["packed"] == pytest.approx(losses["padded"], abs=1e-3)
    assert runs["packed"]["eval_loss"] == pytest.approx(runs["padded"]["eval_loss"], abs=1e-3)
