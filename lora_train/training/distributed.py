"""Running one training job as several processes (torchrun, accelerate launch, DeepSpeed, FSDP, Slurm).

The launchers start N copies of `lora-train`; this module makes the copies agree before any work starts:

- every process uses rank 0's `run_name` (the default holds a timestamp, and two processes can resolve it on
  either side of a second boundary, which would give each rank its own folder);
- checks that touch shared files (does the adapter folder exist?) run on rank 0 only and their verdict is
  broadcast, so all ranks fail together instead of some waiting forever in a collective;
- settings that `accelerate launch` passes through the environment (mixed precision, DeepSpeed gradient
  accumulation) must match what the training config derives, or the run stops with a message naming both keys.

The process group itself is started by accelerate's `PartialState` (the same object the Trainer uses), so the
backend is the engine's choice: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from lora_train.errors import UserError
from lora_train.model import _DS_ZERO_STAGE, _USE_FSDP, shards_weights
from lora_train.schemas import DType, TrainJob
from lora_train.training import plan

# accelerate launch exports these (accelerate/utils/launch.py); their spelling is the launcher's, not ours.
_MIXED_PRECISION = "ACCELERATE_MIXED_PRECISION"
_DS_ACCUMULATION = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
_USE_DEEPSPEED = "ACCELERATE_USE_DEEPSPEED"


def launcher(env=os.environ) -> str:
    """Which engine started this process, for the log."""
    if env.get(_USE_DEEPSPEED, "").lower() == "true":
        return f"accelerate launch, DeepSpeed ZeRO-{env.get(_DS_ZERO_STAGE, '?')}"
    if env.get(_USE_FSDP, "").lower() == "true":
        return f"accelerate launch, FSDP{env.get('FSDP_VERSION', '1')}"
    if _MIXED_PRECISION in env:
        return "accelerate launch"
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "SLURM_JOB_ID" in env:
        return "slurm"
    return "single process"


def expected_mixed_precision(job: TrainJob, compute: DType | None = None) -> str:
    """accelerate's name for the autocast the training config asks for (what the Trainer will be told).
    `compute`: the dtype matmuls run in; default: what this machine makes of quant.compute_dtype."""
    from lora_train.model import compute_dtype

    compute = compute or compute_dtype(job.quant)
    return {DType.bfloat16: "bf16", DType.float16: "fp16"}.get(compute, "no")


def check_launcher_env(job: TrainJob, world: int, env=os.environ, compute: DType | None = None) -> None:
    """Stop when an accelerate config disagrees with the training config, naming both sides.

    The training config is the single source of truth: global batch 256 must stay 256 whatever the launcher
    says, and bf16 compute must not silently become fp32 (or the reverse).
    """
    accumulation = plan.grad_accumulation(job, world)
    if env.get(_USE_DEEPSPEED, "").lower() == "true":
        asked = env.get(_DS_ACCUMULATION, "auto")
        if asked.isdigit() and int(asked) != accumulation:
            raise UserError(
                f"accelerate config deepspeed_config.gradient_accumulation_steps={asked}, but train.global_batch_size="
                f"{job.train.global_batch_size} with train.per_device_batch_size={job.train.per_device_batch_size} on "
                f"{world} process(es) needs {accumulation}; remove the key from the accelerate config (lora-train "
                f"derives it) or change train.global_batch_size")
    # The Trainer's bf16/fp16 flags win over the launcher's setting, except when the config computes in float32:
    # then the launcher's value would switch autocast on behind the config's back.
    asked = env.get(_MIXED_PRECISION, "no")
    want = expected_mixed_precision(job, compute)
    if asked != "no" and want == "no":
        raise UserError(
            f"accelerate config mixed_precision={asked}, but quant.compute_dtype={job.quant.compute_dtype.value} "
            f"runs as float32 here; set mixed_precision: no in the accelerate config or change quant.compute_dtype")
    four_bit = job.quant.mode.value in ("nf4", "fp4")
    if four_bit and shards_weights(env) and job.model.dtype not in (DType.auto, job.quant.compute_dtype):
        # FSDP / ZeRO-3 flatten 4-bit and ordinary weights together: both must have one dtype (quant_storage's).
        raise UserError(
            f"model.dtype={job.model.dtype.value} differs from quant.compute_dtype={job.quant.compute_dtype.value}; "
            f"FSDP and ZeRO-3 shard the 4-bit weights (stored in the compute dtype) with the others, so use "
            f"model.dtype=auto")


def setup(job: TrainJob) -> TrainJob:
    """Start the process group (when there are several processes) and return the job every rank agrees on."""
    world = plan.world_size()
    check_launcher_env(job, world)
    if world == 1:
        return job
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())
    agreed = broadcast_object_list([job.run_name])[0]
    if state.is_main_process:
        nodes = world // int(os.environ.get("LOCAL_WORLD_SIZE", world))
        print(f"processes:  {world} on {nodes} node(s), backend {state.backend} ({launcher()})", flush=True)
    return replace(job, run_name=agreed)


def gathered_state(trainer):
    """The full state dict for rank 0 to save, when FSDP or ZeRO-3 left each rank with shards; None otherwise
    (PEFT then saves the weights it holds). Every rank must call this: gathering is a collective."""
    if not shards_weights():
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def rank_zero_check(check, *args) -> None:
    """Run `check(*args)` on rank 0 only; if it raises a UserError, every rank raises the same one.

    Files such as the adapter folder are shared (or exist only on rank 0's node): one verdict for all ranks
    avoids a half-started job where some processes quit and the others hang in the first collective.
    """
    if plan.world_size() == 1:
        check(*args)
        return
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    message = None
    if PartialState().is_main_process:
        try:
            check(*args)
        except UserError as e:
            message = str(e)
    message = broadcast_object_list([message])[0]
    if message is not None:
        raise UserError(message)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log(msg: str) -> None:
    """Print once per job, not once per process."""
    if is_rank_zero():
        print(msg, file=sys.stdout, flush=True)


def accelerate_config(name: str) -> Path:
    """A shipped accelerate preset (conf/accelerate/<name>.yaml) for `accelerate launch --config_file`."""
    import lora_train.conf

    path = Path(lora_train.conf.__file__).parent / "accelerate" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"no accelerate preset {name!r}; shipped: {', '.join(known)}")
    return path

