"""The accelerate presets under conf/accelerate/ parse with accelerate's own loader, and the environment accelerate
launch would hand to lora-train agrees with the GPT4All-J recipe (mixed precision, gradient accumulation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lora_train import UserError, compose
from lora_train.model import compute_dtype, quant_storage, shards_weights, torch_dtype
from lora_train.training import plan
from lora_train.training.distributed import accelerate_config, check_launcher_env

PRESETS = {"ddp": False, "deepspeed_zero2": False, "deepspeed_zero3": True, "fsdp_qlora": True}  # shards weights?


def recipe():
    return OmegaConf.to_object(compose("train", ["experiment=gpt4all_j_lora_6b"]))


def launch_env(config_file: Path) -> tuple[object, dict]:
    """What `accelerate launch --config_file <file> lora-train` exports to every process, computed by
    accelerate's own launch code (nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "lora-train"])
    args, _, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        # launch_command fills this in before building the environment (the accelerate config's DeepSpeed keys).
        args.deepspeed_fields_from_accelerate_config = ""
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parses_and_matches_the_recipe(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = accelerate_config(name)
    assert path.read_text().startswith("# accelerate launch --config_file")  # the command that uses it
    cfg = load_config_from_file(str(path))
    job = recipe()
    world = cfg.num_processes * cfg.num_machines
    assert cfg.mixed_precision == "bf16" and job.quant.compute_dtype.value == "bfloat16"
    accumulation = plan.grad_accumulation(job, world)  # 256 = 8 per device x 8 GPUs x 4
    assert (job.train.per_device_batch_size * world * accumulation) == job.train.global_batch_size
    ds_accumulation = (cfg.deepspeed_config or {}).get("gradient_accumulation_steps")
    assert ds_accumulation in (None, "auto", accumulation)

    _, env = launch_env(path)
    # As on a bf16 GPU: the recipe computes in bf16 there (this CPU would fall back to float32).
    check_launcher_env(job, world, env, compute=job.quant.compute_dtype)
    assert shards_weights(env) == PRESETS[name]


def test_sharded_presets_store_4bit_weights_in_the_compute_dtype(monkeypatch):
    job = recipe()
    for name, shards in PRESETS.items():
        _, env = launch_env(accelerate_config(name))
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            expected = torch.bfloat16 if shards else torch.uint8
            if torch.cuda.is_available() or not shards:
                assert quant_storage(job.quant) == expected, name
            else:  # a CPU computes in float32 unless it has native bf16: FSDP / ZeRO-3 store in what it computes in
                assert quant_storage(job.quant) == torch_dtype(compute_dtype(job.quant)), name
    job.quant.quant_storage = job.quant.compute_dtype  # an explicit choice wins over the launcher
    assert quant_storage(job.quant) == torch.bfloat16


def test_an_accumulation_that_breaks_the_global_batch_is_refused(tmp_path):
    preset = yaml.safe_load(accelerate_config("deepspeed_zero2").read_text())
    preset["deepspeed_config"]["gradient_accumulation_steps"] = 1
    path = tmp_path / "zero2_ga1.yaml"
    path.write_text(yaml.safe_dump(preset))
    _, env = launch_env(path)
    job = recipe()
    with pytest.raises(UserError, match="gradient_accumulation_steps=1"):
        check_launcher_env(job, 8, env, compute=job.quant.compute_dtype)


def test_fsdp_refuses_a_model_dtype_unlike_the_4bit_storage():
    _, env = launch_env(accelerate_config("fsdp_qlora"))
    job = OmegaConf.to_object(compose("train", ["experiment=gpt4all_j_lora_6b", "model.dtype=float32"]))
    with pytest.raises(UserError, match="model.dtype"):
        check_launcher_env(job, 8, env, compute=job.quant.compute_dtype)


def test_unknown_preset_names_the_shipped_ones():
    with pytest.raises(UserError, match="ddp, deepspeed_zero2, deepspeed_zero3, fsdp_qlora"):
        accelerate_config("zero4")
