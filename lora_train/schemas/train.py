"""Schema of `lora-train` (conf/train.yaml) and its optimisation settings (conf/train/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from lora_train.schemas.data import DataConfig
from lora_train.schemas.lora import LoraConfig
from lora_train.schemas.model import ModelConfig, QuantConfig


@dataclass
class TrainConfig:
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_batch_size: int = 8
    # Examples per optimizer step over all processes; gradient accumulation is derived from it.
    # None = per_device_batch_size x processes (no accumulation).
    global_batch_size: Optional[int] = None
    warmup_steps: int = 0
    lr_scheduler: str = "cosine"  # any transformers scheduler name
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Recompute activations in backward to save memory (~1/3 more FLOPs per token): true, false, or auto: off when the
    # estimated peak without it (lora_train/training/estimate.py) fits in 80% of the memory free on this device, else on.
    gradient_checkpointing: Any = False
    optim: str = "adamw_torch"  # any transformers optimizer name, e.g. paged_adamw_8bit on a GPU
    logging_steps: int = 5
    eval_steps: Optional[int] = None  # None = evaluate once per epoch
    save_steps: Optional[int] = None  # None = no intermediate checkpoints
    save_total_limit: int = 2  # complete checkpoints kept in adapters/.<run_name>.work (<= 0: all)
    # Optimizer steps with NaN/inf loss or gradients that are skipped (not applied) before training stops; 0 = stop at
    # the first one. The last good checkpoint is kept either way.
    max_nonfinite_steps: int = 0
    # A batch's examples laid out without padding, each attending only to itself (lora_train/training/packing.py): same
    # examples per step and same loss as padded batches, without computing on pad tokens.
    packing: bool = True
    group_by_length: bool = True  # unpacked batches only: batch examples of similar length together, less padding
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # LoRA+: the B matrices learn this many times faster than the A matrices (PEFT's create_loraplus_optimizer);
    # None = plain LoRA, one learning rate. The paper suggests 16 for a start.
    loraplus_lr_ratio: Optional[float] = None
    # Extra trl.SFTConfig arguments passed through unchanged (anything not covered above).
    sft_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainJob:
    """The primary config of `lora-train` (conf/train.yaml)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_name: str = "run"  # folder name under adapters_dir
    adapters_dir: str = "adapters"
    seed: int = 42
    dry_run: bool = False  # print the plan and exit without loading anything heavy
    progress: Optional[bool] = None  # progress bars; None = only when stderr is a terminal (never into log files)
    overwrite: bool = False  # replace an existing adapter folder of the same run_name
    # false: start fresh; true: continue the newest complete checkpoint of run_name (same data order and schedule);
    # auto: like true, or a fresh start when there is no checkpoint; or the path of one checkpoint folder.
    resume: str = "false"


def register() -> None:
    """Register the schemas so that conf/*.yaml can name them in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainJob)


register()
