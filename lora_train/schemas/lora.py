"""Schema of the LoRA adapter (conf/lora/)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    # PEFT module names, or ["all-linear"] for every linear layer except the output head.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: str = "none"
