"""lora-train: QLoRA fine-tuning of GPT-J-style models driven by Hydra configs, and the tools that use adapters.

Library use mirrors the console scripts: compose a command's config, call its function.

    from lora_train import compose, train, merge
    adapter_dir = train(compose("train", ["experiment=debug", "run_name=a"]))
    model_dir = merge(compose("merge", [f"adapter={adapter_dir}", "output=merged/a"]))
"""

from lora_train.console import quiet

quiet()  # before any dependency is imported: the filters must be in place when they log (lora_train/console.py)

from lora_train.config import compose  # noqa: E402
from lora_train.data.curate import run as curate  # noqa: E402
from lora_train.errors import Stopped, UserError  # noqa: E402
from lora_train.evaluation.evaluate import run as evaluate  # noqa: E402
from lora_train.inference.generate import run as generate  # noqa: E402
from lora_train.inference.registry import MultiAdapterModel  # noqa: E402
from lora_train.inference.server import run as serve  # noqa: E402
from lora_train.merging.merge import run as merge  # noqa: E402
from lora_train.training.train import run as train  # noqa: E402

__all__ = ["compose", "train", "curate", "merge", "generate", "serve", "evaluate", "MultiAdapterModel",
           "UserError", "Stopped"]
