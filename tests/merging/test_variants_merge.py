"""lora-merge of a DoRA adapter: the merged weights are PEFT's own DoRA merge, and the merged model matches the
adapter on its 4-bit training base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from merge_helpers import adapters, base_path  # noqa: F401  (session fixture)
from safetensors.torch import load_file

from lora_train import UserError, compose
from lora_train.merging.merge import run as merge


def merged(adapter: Path, out: Path, *overrides: str) -> Path:
    return merge(compose("merge", [f"adapter={adapter}", f"output={out}", *overrides]))


def test_dora_merge_into_the_original_weights_is_peft_merge_and_unload(adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = merged(adapters["dora"], tmp_path / "dora", "merge.base=original", "merge.verify=false")
    got = load_file(str(out / "model.safetensors"))
    path = base_path(adapters["dora"])
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                                    adapters["dora"]).merge_and_unload().state_dict()
    base = load_file(str(Path(path) / "model.safetensors"))
    changed = [k for k in base if not torch.equal(base[k], got[k])]
    assert len(changed) == 8  # q_proj and v_proj of 4 layers
    for k in base:
        assert torch.allclose(got[k], ref[k].float(), atol=2e-6), k
    # DoRA is not plain LoRA: dropping the magnitude would give another weight.
    sd = load_file(str(adapters["dora"] / "adapter_model.safetensors"))
    assert any(k.endswith("lora_magnitude_vector") for k in sd)


def test_dora_merge_verifies_against_the_adapter_on_its_4bit_base(adapters, tmp_path):
    out = merged(adapters["dora"], tmp_path / "dora")
    v = json.loads((out / "merge_report.json").read_text())["verification"]
    assert v["failed"] == [] and v["max_abs_logit_diff"] < 1e-3 and v["top1_agreement"] == 1.0


def test_dora_magnitude_without_use_dora_is_refused(adapters, tmp_path):
    import shutil

    broken = tmp_path / "half-dora"
    shutil.copytree(adapters["dora"], broken)
    conf = json.loads((broken / "adapter_config.json").read_text())
    conf["use_dora"] = False
    (broken / "adapter_config.json").write_text(json.dumps(conf))
    with pytest.raises(UserError, match=r"adapter 'half-dora'.*DoRA magnitude"):
        merged(broken, tmp_path / "out", "merge.verify=false")
    assert not (tmp_path / "out").exists()
