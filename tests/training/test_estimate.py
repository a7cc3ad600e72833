"""The memory / FLOPs estimator: its arithmetic against published GPT-J-6B numbers, and against measured CPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from lora_train import compose
from lora_train.schemas import DType, QuantMode
from lora_train.training.estimate import GIB, bits_per_weight, estimate, shape_of


def job(*overrides):
    return OmegaConf.to_object(compose("train", list(overrides)))


def test_gptj_6b_numbers_match_published_figures():
    from transformers import GPTJConfig

    j = job("experiment=gpt4all_j_lora_6b", "train.per_device_batch_size=1")
    shape = shape_of(GPTJConfig(), j.lora)  # GPTJConfig's defaults are GPT-J-6B
    assert shape.total_params == 6_050_882_784  # transformers' count of EleutherAI/gpt-j-6b
    assert shape.lora_params == 3_670_016  # PEFT's "trainable params" for r=8 on q_proj, v_proj
    assert bits_per_weight(QuantMode.nf4, True, 2) == pytest.approx(4.127, abs=1e-3)  # QLoRA paper, double quant
    e = estimate(shape, j, DType.bfloat16)
    assert 3.3 * GIB < e.weights < 3.7 * GIB  # 4.127 bits for 5.64B linear weights + bf16 embeddings and head
    assert e.total < 6 * GIB  # QLoRA of GPT-J-6B at 1024 tokens, batch 1, checkpointing: fits a 6-8 GB GPU
    j.quant.mode = QuantMode.none
    j.model.dtype = DType.float32
    assert estimate(shape, j, DType.float32).weights / GIB == pytest.approx(22.5, abs=0.1)  # "22+ GB in float32"
    # FLOPs: forward ~2 x params; LoRA training ~2x forward (no weight gradients), plus attention.
    assert e.forward_flops_per_token == pytest.approx(2 * 6.05e9, rel=0.02)
    assert e.model_flops_per_token == pytest.approx(4 * 6.05e9, rel=0.05)
    assert e.hardware_flops_per_token > e.model_flops_per_token  # checkpointing recomputes the forward


def test_the_recipe_dry_run_works_offline(capsys):
    """The README's GPT-J-6B dry run without the Hub (the tests run offline): counts and estimate, from the shape."""
    from lora_train import train

    train(compose("train", ["experiment=gpt4all_j_lora_6b", "train.per_device_batch_size=1", "dry_run=true"]))
    captured = capsys.readouterr()
    # The base's own count (transformers' count of EleutherAI/gpt-j-6b), named as such: the LoRA ones come on top.
    assert "parameters: 6,050,882,784 in the base (frozen), 3,670,016 trainable (0.061% of the base)" in captured.out
    assert "GFLOP per trained token" in captured.out and "unavailable" not in captured.err


def test_dry_run_prints_the_estimate(capsys, model_cache):
    from lora_train.training.train import run

    run(compose("train", ["dry_run=true", "run_name=est"]))
    out = capsys.readouterr().out
    assert "memory:" in out and "GFLOP per trained token" in out and "activations" in out


def test_a_tied_model_counts_its_shared_embedding_once(capsys, model_cache):
    """The tiny Llama ties lm_head to the input embedding, as SmolLM2 does: the dry run counts what loading counts."""
    from transformers import AutoModelForCausalLM

    from lora_train.model import builtin_path
    from lora_train.training.train import run

    loaded = AutoModelForCausalLM.from_pretrained(builtin_path("builtin:tiny-llama"))
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    run(compose("train", ["model=tiny_llama", "dry_run=true", "run_name=tied"]))
    assert f"parameters: {loaded.num_parameters():,} in the base (frozen)" in capsys.readouterr().out


def test_flops_match_a_counted_training_step(model_cache):
    """Count every FLOP of a real LoRA forward + backward with torch's FlopCounterMode. The base is unquantized
    here: bitsandbytes' CPU 4-bit matmul is a custom kernel the counter cannot see, and quantization does not change
    the matmul shapes the estimate counts."""
    import torch
    from peft import get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from lora_train.model import load_base, peft_config, resolve_model

    j = job("data.max_length=128", "train.per_device_batch_size=2", "quant=none", "model.dtype=float32")
    path = resolve_model(j.model)
    model = get_peft_model(load_base(path, j.model, j.quant), peft_config(j.lora))
    model.train()
    ids = torch.randint(0, 1000, (2, 128))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    measured = counter.get_total_flops() / ids.numel()
    from transformers import AutoConfig

    e = estimate(shape_of(AutoConfig.from_pretrained(path), j.lora), j, DType.float32)
    assert e.model_flops_per_token == pytest.approx(measured, rel=0.25), (e.model_flops_per_token, measured)


MEASURE = textwrap.dedent("""
    import json, re, sys, torch
    from peft import get_peft_model
    from lora_train.model import load_base, peft_config
    from lora_train.schemas import ModelConfig, QuantConfig, DType, LoraConfig
    path, gc, B, T = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
    st = lambda k: int(re.search(k + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
    m = get_peft_model(load_base(path, ModelConfig(name_or_path=path), QuantConfig(compute_dtype=DType.float32)),
                       peft_config(LoraConfig()))
    if gc:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.enable_input_require_grads()
    m.train()
    x = torch.randint(0, 1000, (B, T))
    m(input_ids=x[:, :8], labels=x[:, :8]).loss.backward()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark
    base = st("VmRSS")
    m(input_ids=x, labels=x).loss.backward()
    print(json.dumps({"delta": st("VmHWM") - base}))
""")


@pytest.mark.parametrize("gc", [False, True])
@pytest.mark.parametrize("arch", ["gptj", "llama"])
def test_activation_memory_matches_a_measured_cpu_step(tmp_path, gc, arch):
    """Peak resident memory a forward + backward adds, measured in a fresh process (malloc returns freed blocks at
    once, so RSS follows live tensors), against the estimate's activations + logits + dequantization. The constants
    were fitted on GPT-J blocks; the Llama block (gated MLP, grouped-query attention) must match them too."""
    from transformers import AutoConfig

    from lora_train.tiny import TinyLlamaSpec, TinySpec, build, build_llama

    folder = tmp_path / "m"
    if arch == "gptj":
        build(folder, TinySpec(n_embd=512, n_layer=4, n_head=8, rotary_dim=16))
    else:
        build_llama(folder, TinyLlamaSpec(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                                          num_attention_heads=8, num_key_value_heads=2))
    B, T = 1, 1024  # batch 1: with several rows the CPU step needs more than the estimate (see BENCHMARKS.md)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(int(gc)), str(B), str(T)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["delta"]
    j = job(f"data.max_length={T}", f"train.per_device_batch_size={B}", f"train.gradient_checkpointing={gc}",
            "quant.compute_dtype=float32")
    e = estimate(shape_of(AutoConfig.from_pretrained(folder), j.lora), j, DType.float32)
    predicted = e.activations + e.head + e.dequant
    assert predicted == pytest.approx(measured, rel=0.25), (predicted / 2**20, measured / 2**20)


def test_auto_checkpointing_follows_the_estimate_and_the_free_memory():
    """auto: off when the run fits without it (the recompute is pure cost), on when it would not fit, on without an
    estimate; the plan line says which and why."""
    from lora_train.training.estimate import resolve_checkpointing

    j = job("experiment=gpt4all_j_lora_6b", "train.per_device_batch_size=4")  # GPT-J-6B, 4 x 1024 tokens
    assert j.train.gradient_checkpointing == "auto"
    gpu80, gpu24 = (80 * GIB, "free on an 80 GB GPU"), (24 * GIB, "free on a 24 GB GPU")
    big, line = resolve_checkpointing(j, "EleutherAI/gpt-j-6b", gpu80)
    small, _ = resolve_checkpointing(j, "EleutherAI/gpt-j-6b", gpu24)
    assert big.train.gradient_checkpointing is False and small.train.gradient_checkpointing is True
    assert "auto -> gradient checkpointing off" in line and "80.0 GiB free on an 80 GB GPU" in line
    unknown, line = resolve_checkpointing(j, "/no/such/model", gpu80)
    assert unknown.train.gradient_checkpointing is True and "no estimate" in line
    fixed = job("train.gradient_checkpointing=true")
    assert resolve_checkpointing(fixed, "/no/such/model", gpu80) == (fixed, None)


@pytest.mark.parametrize("value", ["sometimes", "1"])
def test_checkpointing_takes_true_false_or_auto(value, tmp_path):
    from lora_train import UserError, train

    with pytest.raises(UserError, match=f"train.gradient_checkpointing={value!r}|train.gradient_checkpointing=1"):
        train(compose("train", [f"train.gradient_checkpointing={value}", f"adapters_dir={tmp_path}"]))


def test_dry_run_shows_the_auto_decision(capsys):
    from lora_train import train

    train(compose("train", ["train.gradient_checkpointing=auto", "dry_run=true"]))  # the tiny model fits anywhere
    out = capsys.readouterr().out
    assert "checkpoint: auto -> gradient checkpointing off" in out and "RAM available" in out
