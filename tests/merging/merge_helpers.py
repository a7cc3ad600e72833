"""Adapters shared by the merge and combine tests: one trained on the embedded default (a few steps at a high
learning rate, so its delta is far from zero), and PEFT adapters of other shapes (random A and B) for the maths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lora_train import compose, train
from lora_train.model import resolve_model
from lora_train.schemas import TrainJob

COPIED = ["lora_train.yaml", "base_model.json", "tokenizer.json", "tokenizer_config.json"]


def base_path(adapter: Path) -> str:
    job = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainJob), OmegaConf.load(adapter / "lora_train.yaml")))
    return resolve_model(job.model)


def peft_adapter(trained: Path, out: Path, r: int, seed: int, **lora_kwargs) -> Path:
    """A PEFT adapter for the same base with random (non-zero) A and B, saved with the trained one's metadata."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path(trained))
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                     **lora_kwargs)
    model = get_peft_model(base, cfg)
    with torch.no_grad():  # PEFT's random init gives B the scale of A; keep the deltas modest like trained ones
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    model.save_pretrained(out)
    for f in COPIED:
        shutil.copy(trained / f, out / f)
    return out


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, model_cache) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge_adapters")
    # Computed in float32 on every CPU: the tests check merges to 1e-4, and where the CPU has native bf16 the default
    # (bf16 compute) would put bf16 rounding into every reference they compare against.
    trained = train(compose("train", ["experiment=debug", f"adapters_dir={root}", "run_name=a",
                                      "train.learning_rate=5e-3", "quant.compute_dtype=float32"]))
    return {
        "a": trained,
        "a2": peft_adapter(trained, root / "a2", r=8, seed=1),  # same rank as a
        "b": peft_adapter(trained, root / "b", r=4, seed=2),  # another rank
        "rs": peft_adapter(trained, root / "rs", r=8, seed=3, use_rslora=True),
        "dora": peft_adapter(trained, root / "dora", r=8, seed=4, use_dora=True),
    }


def deltas(folder: Path) -> dict[str, torch.Tensor]:
    """module -> scale * B @ A, computed from the files alone (the reference maths for the tests)."""
    import json

    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    sd = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, a in sd.items():
        if ".lora_A." in key:
            b = sd[key.replace(".lora_A.", ".lora_B.")]
            r = a.shape[0]
            scale = cfg["lora_alpha"] / (r ** 0.5 if cfg.get("use_rslora") else r)
            out[key.split(".lora_A.")[0].removeprefix("base_model.model.")] = scale * (b.float() @ a.float())
    return out
