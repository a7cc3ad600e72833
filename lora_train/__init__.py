"""lora-train: QLoRA fine-tuning of GPT-J-style models driven by Hydra configs, and the tools that use adapters.

Library use mirrors the console scripts: compose a config, call run().

    from lora_train import compose, train
    adapter_dir = train(compose("train", ["train.max_steps=4"]))
"""

from lora_train.config import compose
from lora_train.errors import UserError
from lora_train.merge import run as merge
from lora_train.train import run as train

__all__ = ["compose", "train", "merge", "UserError"]
