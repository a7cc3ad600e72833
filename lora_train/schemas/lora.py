"""Schema of the LoRA adapter (conf/lora/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class LoraInit(str, Enum):
    """How the adapter's A and B start (lora_train/training/init.py). The residual ones change the 4-bit base the
    adapter trains on; the adapter is saved converted to a plain LoRA on the original base (rank 2r)."""

    default = "default"  # PEFT's default: Kaiming-uniform A, zero B; the base is untouched
    gaussian = "gaussian"  # Gaussian A (std 1/r), zero B; the base is untouched
    loftq = "loftq"  # A, B fit the quantization error: 4-bit base + adapter starts close to the full weights
    pissa = "pissa"  # A, B = the weights' top-r singular directions; the base holds the (quantized) residual
    olora = "olora"  # A, B = the weights' QR factors (first r); the base holds the (quantized) residual


class LoraBias(str, Enum):
    """Which biases train with the adapter (PEFT's LoraConfig.bias): a choice, so a typo fails at compose time."""

    none = "none"  # no bias trains: the adapter alone holds the change
    all = "all"  # every bias of the model trains (and is saved with the adapter)
    lora_only = "lora_only"  # only the biases of the layers the adapter wraps


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    # PEFT module names, or ["all-linear"] for every linear layer except the output head.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: LoraBias = LoraBias.none
    init: LoraInit = LoraInit.default  # see LoraInit; default leaves everything as it was
    use_rslora: bool = False  # rank-stabilised scale alpha / sqrt(r) instead of alpha / r (for larger ranks)
    use_dora: bool = False  # DoRA: a trained magnitude per output feature on top of the LoRA direction
    # LoftQ only: rounds of quantize-then-fit. 1 keeps the 4-bit base exactly as loaded; more rounds also change the
    # base (it becomes the quantized residual) and the adapter is saved converted to rank 2r.
    loftq_iters: int = 1
