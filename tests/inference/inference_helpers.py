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


def fit_adapter(folder: Path, like: Path, prompt: str, target: str, max_steps: int = 600) -> int:
    """An adapter that answers `prompt` (as one chat turn) with exactly `target`, greedily, on the base `like` was
    trained on, loaded the way the server loads it. Made by gradient descent on that one example until greedy
    decoding gives the target (a real adapter, not edited weights); returns the steps it took. lora_train.yaml is
    copied from `like`, so servers infer the same base from it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lora_train.adapters import read_adapter
    from lora_train.data.examples import prompt_ids as rendered_prompt
    from lora_train.model import load_base, load_tokenizer, resolve_model

    job = read_adapter(like).job
    path = resolve_model(job.model)
    tok = load_tokenizer(path, job.model)
    base = load_base(path, job.model, job.quant)
    for module in base.modules():  # as lora-train does: bitsandbytes' AVX512-BF16 inference layout breaks training
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    model = get_peft_model(base,
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                      target_modules=["q_proj", "v_proj", "out_proj", "fc_in", "fc_out"]))
    # The prompt as the server renders a chat turn for this adapter: its training template, piece by piece.
    prompt_ids = rendered_prompt([{"role": "user", "content": prompt}], job.data.template, tok)[1]
    target_ids = tok(target)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + target_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + target_ids])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    torch.manual_seed(0)
    for step in range(1, max_steps + 1):
        model.train()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                out = model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=len(target_ids) + 2,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
            if tok.decode(out[0, len(prompt_ids):], skip_special_tokens=True) == target:
                model.save_pretrained(folder)
                shutil.copy(like / "lora_train.yaml", folder / "lora_train.yaml")
                return step
    raise AssertionError(f"no adapter answering {target!r} after {max_steps} steps (last loss {loss.item():.3f})")
