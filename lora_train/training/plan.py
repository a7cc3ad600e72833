"""The training plan: batch arithmetic, step counts and parameter counts, computed without loading weights.

`lora-train dry_run=true` prints it; `lora-train` prints it before training starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from lora_train.errors import UserError
from lora_train.schemas import LoraInit, TrainJob


def world_size() -> int:
    """Processes in this job (torchrun / accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def grad_accumulation(job: TrainJob, world: int) -> int:
    """Gradient accumulation that turns per-device batches from `world` processes into train.global_batch_size."""
    t = job.train
    per_step = t.per_device_batch_size * world
    if t.global_batch_size is None:
        return 1
    if t.global_batch_size % per_step:
        raise UserError(
            f"train.global_batch_size={t.global_batch_size} is not a multiple of train.per_device_batch_size="
            f"{t.per_device_batch_size} x {world} process(es) = {per_step}; change one of them"
        )
    return t.global_batch_size // per_step


def check_optimizer(job: TrainJob) -> None:
    """train.optim and train.lr_scheduler against the names transformers itself accepts (its own enums, so a new
    transformers brings its new names): a typo fails with the choices at config time, not after the data is
    tokenized and the model loaded."""
    import difflib

    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, value, names in [("train.optim", job.train.optim, [m.value for m in OptimizerNames]),
                              ("train.lr_scheduler", job.train.lr_scheduler, [m.value for m in SchedulerType])]:
        if value not in names:
            close = ([n for n in names if n.startswith(str(value))][:3]
                     or difflib.get_close_matches(str(value), names, n=3))
            raise UserError(f"{key}={value!r} is not a name transformers knows"
                            + (f" (did you mean {' or '.join(close)}?)" if close else "")
                            + f"; choose one of: {', '.join(names)}")


@dataclass
class Plan:
    world: int
    accumulation: int
    global_batch: int
    train_rows: int | None = None
    optimizer_steps: int | None = None
    base_params: int | None = None  # the base model's own (frozen) parameters, without the LoRA ones
    trainable_params: int | None = None
    layout: str | None = None  # how a micro-batch's examples are laid out (known once the collator is chosen)
    data_cache: str | None = None  # "reused <entry>" / "stored <entry>": the tokenized examples' cache entry
    checkpointing: str | None = None  # how train.gradient_checkpointing=auto decided

    def lines(self, job: TrainJob) -> list[str]:
        from lora_train.model import compute_dtype

        t = job.train
        used = compute_dtype(job.quant).value
        want = job.quant.compute_dtype.value
        compute = want if used == want else f"{used} (asked {want}; this hardware would only emulate it)"
        fmt = lambda n: "unknown" if n is None else f"{n:,}"  # noqa: E731
        pct = (f" ({100 * self.trainable_params / self.base_params:.3f}% of the base)"
               if self.trainable_params and self.base_params else "")
        return [
            f"model:      {job.model.name_or_path} (revision {job.model.revision or 'default'})",
            f"quant:      {job.quant.mode.value}"
            + (f", double quant {job.quant.double_quant}" if job.quant.mode.value in ("nf4", "fp4") else "")
            + f", compute {compute}",
            f"lora:       r={job.lora.r} alpha={job.lora.alpha} dropout={job.lora.dropout} "
            f"targets={','.join(job.lora.target_modules)}" + variant(job),
            f"parameters: {fmt(self.base_params)} in the base (frozen), {fmt(self.trainable_params)} trainable{pct}",
            f"data:       {job.data.source} (revision {job.data.revision or 'default'}), "
            f"{fmt(self.train_rows)} training rows, max length {job.data.max_length}"
            + (f"; tokenized examples {self.data_cache}" if self.data_cache else ""),
            f"batch:      {self.global_batch} per optimizer step = {t.per_device_batch_size} per device x "
            f"{self.world} process(es) x {self.accumulation} accumulation"
            + (f"; {self.layout}" if self.layout else ""),
            f"schedule:   {fmt(self.optimizer_steps)} optimizer steps, lr {t.learning_rate} {t.lr_scheduler}, "
            f"{t.warmup_steps} warmup",
            f"output:     {os.path.join(job.adapters_dir, job.run_name)}",
        ] + ([self.checkpointing] if self.checkpointing else [])


def variant(job: TrainJob) -> str:
    """The LoRA variant switched on, if any: a user should see LoftQ or DoRA before a long run starts, not after."""
    lora = job.lora
    parts = [f"init {lora.init.value}"] if lora.init != LoraInit.default else []
    if lora.init == LoraInit.loftq:
        parts[-1] += f" ({lora.loftq_iters} round{'s' if lora.loftq_iters != 1 else ''})"
    parts += [name for name, on in (("rsLoRA", lora.use_rslora), ("DoRA", lora.use_dora)) if on]
    if job.train.loraplus_lr_ratio:
        parts.append(f"LoRA+ ratio {job.train.loraplus_lr_ratio}")
    return f"; {', '.join(parts)}" if parts else ""


def optimizer_steps(job: TrainJob, train_rows: int, global_batch: int) -> int:
    if job.train.max_steps > 0:
        return job.train.max_steps
    return math.ceil(math.ceil(train_rows / global_batch) * job.train.epochs)


def count_parameters(model_path: str, job: TrainJob) -> tuple[int, int]:
    """(the base's own frozen parameters, trainable LoRA ones), counted from the model's config on the meta device:
    nothing is loaded."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_train.model import peft_config
    from lora_train.training.estimate import model_config

    config = model_config(model_path, job)
    # torch.device("meta") rather than accelerate's init_empty_weights, which unties tied embeddings (SmolLM2's
    # lm_head would be counted twice).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=job.model.trust_remote_code,
                                                 dtype=torch.float32)
        model = get_peft_model(model, peft_config(job.lora))
    trainable, everything = model.get_nb_trainable_parameters()  # everything = base + LoRA
    return everything - trainable, trainable
