"""Typed config schemas.

Every YAML under conf/ is validated against these dataclasses when Hydra composes it: a wrong type, an unknown
key or a bad enum choice fails at compose time with a message naming the key, before any model is loaded.
OmegaConf does not accept ``Literal``, so choices are ``Enum``s.

Layout: the parts every command shares mirror conf/'s groups (model.py: model/ and quant/; lora.py; data.py;
train.py: train/ and lora-train's primary config), then one module per other command (curate, merge, infer, eval).
Importing this package registers every command's schema in Hydra's ConfigStore. It is the lowest layer of the
package: it imports nothing of lora_train but errors.
"""

from lora_train.schemas import curate, eval, infer, merge  # noqa: F401  (register the other commands' schemas)
from lora_train.schemas.data import (LIST_DATA, REFUSAL_PHRASES, SAMPLE_DATA, Curation, DataConfig, DataFormat,
                                     DedupKey, FilterStep)
from lora_train.schemas.lora import LoraBias, LoraConfig, LoraInit
from lora_train.schemas.model import SMOLLM2, TINY_GPTJ, TINY_LLAMA, DType, ModelConfig, QuantConfig, QuantMode
from lora_train.schemas.train import TrainConfig, TrainJob

__all__ = ["LIST_DATA", "REFUSAL_PHRASES", "SAMPLE_DATA", "Curation", "DataConfig", "DataFormat", "DedupKey",
           "FilterStep", "LoraBias", "LoraConfig", "LoraInit", "TINY_GPTJ", "TINY_LLAMA", "SMOLLM2", "DType",
           "ModelConfig", "QuantConfig", "QuantMode", "TrainConfig", "TrainJob"]
