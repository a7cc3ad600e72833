"""Shared by the inference tests: two really trained tiny adapters, and adapter folders that must be refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from lora_train import compose, train


def train_two(adapters_dir: Path) -> None:
    """Two 4-step adapters on the embedded tiny GPT-J (4-bit). The learning rates are high so that a few steps
    visibly change greedy outputs (lora-train's LoRA B starts at zero: a tiny lr would leave the base unchanged)."""
    for name, lr in [("alpha", 5e-3), ("beta", 1e-2)]:
        train(compose("train", ["experiment=debug", f"adapters_dir={adapters_dir}", f"run_name={name}",
                                f"train.learning_rate={lr}"]))


def foreign_adapter(folder: Path) -> None:
    """A real PEFT adapter made for a GPT-J of another width (128 instead of 256)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    model = GPTJForCausalLM(GPTJConfig(vocab_size=1024, n_embd=128, n_layer=2, n_head=4, rotary_dim=16,
                                       n_positions=256))
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)


def escaping_links(adapters_dir: Path, outside: Path, source: Path) -> None:
    """`evil`: a symlink to an adapter outside adapters_dir; `sneaky`: a folder whose weights link outside."""
    shutil.copytree(source, outside / "elsewhere")
    (adapters_dir / "evil").symlink_to(outside / "elsewhere", target_is_directory=True)
    sneaky = adapters_dir / "sneaky"
    sneaky.mkdir()
    shutil.copy(source / "adapter_config.json", sneaky / "adapter_config.json")
    (sneaky / "adapter_model.safetensors").symlink_to(outside / "elsewhere" / "adapter_model.safetensors")


def cli(*args: str, cwd: Path, input: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """A console script as a user runs it, optionally with text typed on stdin."""
    exe = Path(sys.executable).with_name(args[0])
    return subprocess.run([str(exe), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          input=input, env=dict(os.environ))
