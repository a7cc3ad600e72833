"""lora-merge: a merged full model that plain transformers loads, that matches the adapter, and bad input refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from merge_helpers import adapters, base_path, deltas  # noqa: F401  (session fixture)
from omegaconf import OmegaConf
from safetensors.torch import load_file

from lora_train import UserError, compose
from lora_train.artifacts import shown_path
from lora_train.merging.merge import run as merge
from lora_train.schemas import TrainJob
from lora_train.tiny import TinySpec, build

PROMPT = "What is the capital of France?\nThe capital"


def merged(adapter: Path, out: Path, *overrides: str) -> Path:
    return merge(compose("merge", [f"adapter={adapter}", f"output={out}", *overrides]))


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits[0].float()


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def dequantized(adapters, tmp_path_factory) -> Path:
    return merged(adapters["a"], tmp_path_factory.mktemp("m") / "a-merged")


def test_merged_model_loads_in_plain_transformers_and_matches_the_adapter(adapters, dequantized):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_train.merging.verify import dequantized_in_float32
    from lora_train.model import load_base

    for f in ["model.safetensors", "config.json", "tokenizer.json", "README.md", "merge_report.json"]:
        assert (dequantized / f).is_file(), f
    tok = AutoTokenizer.from_pretrained(dequantized)
    got = logits(AutoModelForCausalLM.from_pretrained(dequantized), tok)
    job = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainJob),
                                              OmegaConf.load(adapters["a"] / "lora_train.yaml")))
    base = load_base(base_path(adapters["a"]), job.model, job.quant)
    dequantized_in_float32(base)  # bitsandbytes' 4-bit CPU kernels round in bf16 on CPUs with native bf16
    reference = PeftModel.from_pretrained(base, adapters["a"])
    want = logits(reference, tok)
    plain_base = logits(AutoModelForCausalLM.from_pretrained(base_path(adapters["a"])), tok)
    assert (got - want).abs().max() < 1e-4  # the adapter on its 4-bit training base, reproduced
    assert (got - plain_base).abs().max() > 1e-2  # and the merge did change the model

    report = json.loads((dequantized / "merge_report.json").read_text())
    v = report["verification"]
    assert report["merge_base"] == "dequantized" and report["quant"] == "nf4" and report["merged_modules"] == 8
    assert v["max_abs_logit_diff"] < 1e-4 and v["top1_agreement"] == 1.0 and v["failed"] == []
    assert abs(v["eval_loss_merged"] - v["eval_loss_adapter"]) < 1e-4 and v["examples"] >= 1
    card = (dequantized / "README.md").read_text()
    for text in ["base_model: builtin:tiny-gptj", f"`{shown_path(str(adapters['a']))}`", "dequantized",
                 "max |logit difference|"]:
        assert text in card, text


def test_original_base_is_exactly_peft_merge_and_unload(adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = merged(adapters["a"], tmp_path / "orig", "merge.base=original", "merge.verify=false")
    ours = load_file(str(out / "model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(base_path(adapters["a"]))
    theirs = PeftModel.from_pretrained(base, adapters["a"]).merge_and_unload().state_dict()
    for name, t in ours.items():
        assert torch.allclose(t, theirs[name], atol=1e-6), name
    assert not (out / "merge_report.json").read_text().count('"verification"')


def test_failed_verification_exits_nonzero_and_writes_nothing(adapters, tmp_path):
    proc = run_cli("lora-merge", f"adapter={adapters['a']}", f"output={tmp_path / 'out'}", "merge.base=original",
                   "merge.max_abs_logit_diff=1e-6", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "verification failed" in proc.stderr and "merge.force=true" in proc.stderr
    assert "max |logit difference|" in proc.stdout  # the table is printed either way
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_dtype_and_sharding(adapters, dequantized, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merged(adapters["a"], tmp_path / "bf16", "dtype=bfloat16", "merge.max_shard_size=1MB", "merge.verify=false")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).is_file() for s in shards)
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.dtype == torch.bfloat16
    fp32 = load_file(str(dequantized / "model.safetensors"))
    for name, p in model.state_dict().items():
        if name in fp32:
            assert torch.equal(p, fp32[name].to(torch.bfloat16)), name


def test_existing_output_is_kept_without_overwrite(adapters, dequantized, tmp_path):
    out = tmp_path / "exists"
    shutil.copytree(dequantized, out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="overwrite=true"):
        merged(adapters["a"], out, "merge.verify=false")
    assert (out / "model.safetensors").read_bytes() == before
    merged(adapters["a"], out, "merge.verify=false", "dtype=float16", "overwrite=true")
    assert load_file(str(out / "model.safetensors"))["transformer.wte.weight"].dtype == torch.float16
    assert leftovers(tmp_path) == []


def test_adapter_from_another_base_is_refused(adapters, tmp_path):
    other = tmp_path / "other-base"
    build(other, TinySpec(n_embd=128, n_layer=2))
    with pytest.raises(UserError, match=r"hidden_size=256.*other-base.*hidden_size=128"):
        merged(adapters["a"], tmp_path / "out", f"base_model={other}")
    plain = tmp_path / "plain"  # no base_model.json: the per-module shapes still catch it
    shutil.copytree(adapters["a"], plain)
    (plain / "base_model.json").unlink()
    with pytest.raises(UserError, match=r"adapter 'plain'.*q_proj.*other-base"):
        merged(plain, tmp_path / "out", f"base_model={other}")
    assert not (tmp_path / "out").exists()


def test_bad_adapter_files_are_clear_errors(adapters, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(adapters["a"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(UserError, match="adapter 'broken'.*adapter_model.safetensors"):
        merged(broken, tmp_path / "out")
    weights.unlink()
    with pytest.raises(UserError, match="adapter 'broken'.*no adapter_model.safetensors"):
        merged(broken, tmp_path / "out")
    # Pickle weights: refused unless allowed, and then merged exactly like the safetensors ones.
    torch.save(load_file(str(adapters["a"] / "adapter_model.safetensors")), broken / "adapter_model.bin")
    with pytest.raises(UserError, match="pickle"):
        merged(broken, tmp_path / "out")
    out = merged(broken, tmp_path / "out", "allow_pickle=true", "merge.verify=false")
    ref = merged(adapters["a"], tmp_path / "ref", "merge.verify=false")
    assert load_file(str(out / "model.safetensors")).keys() == load_file(str(ref / "model.safetensors")).keys()
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="adapter=..."):
        merge(compose("merge", [f"output={tmp_path / 'x'}"]))
    with pytest.raises(UserError, match="only applies when combining"):
        merged(adapters["a"], tmp_path / "x", "density=0.5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out", "ref"]


def test_merge_uses_the_lora_maths(adapters, tmp_path):
    """An adapter with another rank and alpha: merged weight = base weight + alpha / r * B @ A, module by module."""
    out = merged(adapters["b"], tmp_path / "b", "merge.base=original", "merge.verify=false")
    got = load_file(str(out / "model.safetensors"))
    base = load_file(str(Path(base_path(adapters["b"])) / "model.safetensors"))
    d = deltas(adapters["b"])
    assert len(d) == 8
    for module, delta in d.items():
        assert torch.allclose(got[f"{module}.weight"], base[f"{module}.weight"] + delta, atol=1e-6), module
    untouched = [n for n in base if n.removesuffix(".weight") not in d]
    assert all(torch.equal(got[n], base[n]) for n in untouched)


def test_config_rejects_unknown_keys_and_bad_choices():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose("merge", ["merge.base=rounded"])
    with pytest.raises(ConfigCompositionException):
        compose("merge", ["combination=average"])
    with pytest.raises(ConfigCompositionException):
        compose("merge", ["merge.nonsense=1"])


@pytest.mark.parametrize("mode", ["nf4", "fp4", "int8"])
def test_dequantized_weights_are_bit_identical_to_the_training_base(mode):
    """merge.base=dequantized rounds each weight itself (streaming); it must equal the base training loaded."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    from lora_train.merging.base_weights import BaseCheckpoint, Dequantizer
    from lora_train.model import load_base, resolve_model
    from lora_train.schemas import ModelConfig, QuantConfig, QuantMode

    model_cfg, quant = ModelConfig(), QuantConfig(mode=QuantMode(mode))
    loaded = load_base(resolve_model(model_cfg), model_cfg, quant)
    ckpt = BaseCheckpoint.open(model_cfg, allow_pickle=False)
    stream = Dequantizer.load(ckpt, model_cfg, quant)
    layers = {f"{n}.weight": m for n, m in loaded.named_modules()
              if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}
    assert set(layers) == stream.names and len(layers) == 24
    tensors = dict(ckpt.tensors())
    for name, layer in layers.items():
        w = layer.weight
        want = F.dequantize_4bit(w.data, w.quant_state) if mode != "int8" else \
            F.int8_vectorwise_dequant(w.data, w.SCB).to(stream.dtype)
        assert torch.equal(stream.weight(name, tensors[name]), want), name
