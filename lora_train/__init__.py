"""lora-train: QLoRA fine-tuning of GPT-J-style models driven by Hydra configs, and the tools that use adapters.

Library use mirrors the console scripts: compose a command's config, call its function.

    from lora_train import compose, train, merge
    adapter_dir = train(compose("train", ["experiment=debug", "run_name=a"]))
    model_dir = merge(compose("merge", [f"adapter={adapter_dir}", "output=merged/a"]))
"""

from lora_train.config import compose
from lora_train.data.curate import run as curate
from lora_train.errors import Stopped, UserError
from lora_train.evaluation.evaluate import run as evaluate
from lora_train.inference.generate import run as generate
from lora_train.inference.registry import MultiAdapterModel
from lora_train.inference.server import run as serve
from lora_train.merging.merge import run as merge
from lora_train.training.train import run as train

__all__ = ["compose", "train", "curate", "merge", "generate", "serve", "evaluate", "MultiAdapterModel",
           "UserError", "Stopped"]
