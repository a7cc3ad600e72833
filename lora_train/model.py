"""Model: config -> BitsAndBytesConfig, config -> peft.LoraConfig, and loading the base and its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

from lora_train.errors import UserError
from lora_train.schemas import SMOLLM2, TINY_GPTJ, TINY_LLAMA, DType, LoraConfig, ModelConfig, QuantConfig, QuantMode

# accelerate launch exports these (accelerate/utils/launch.py) under FSDP and DeepSpeed, which shard every weight.
_DS_ZERO_STAGE = "ACCELERATE_DEEPSPEED_ZERO_STAGE"
_USE_FSDP = "ACCELERATE_USE_FSDP"


def torch_dtype(d: DType):
    import torch

    return {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}.get(d, "auto")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU does bf16 matmuls natively (AMX or AVX512-BF16). Elsewhere PyTorch emulates bf16 and a
    bf16 matmul is 10-100x slower than float32 (measured on an AVX2-only CPU), so bf16 compute is a trap."""
    import torch

    if "AMX" in torch.backends.cpu.get_cpu_capability():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def compute_dtype(cfg: QuantConfig) -> DType:
    """The dtype matmuls really run in: quant.compute_dtype, unless the hardware would emulate it.

    bf16 on a CPU without native bf16, or fp16 on a CPU, falls back to float32 (the results are the same up to
    rounding, only much faster); bf16 on a GPU without bf16 (pre-Ampere) falls back to fp16.
    """
    import torch

    want = cfg.compute_dtype
    if torch.cuda.is_available():
        if want == DType.bfloat16 and not torch.cuda.is_bf16_supported():
            return DType.float16
        return want
    if want == DType.float16 or (want == DType.bfloat16 and not cpu_has_fast_bf16()):
        return DType.float32
    return want


def builtin_path(name: str) -> Path:
    """The cached folder of a `builtin:` model, built (or converted) on first use."""
    from lora_train import gguf, tiny

    builders = {
        TINY_GPTJ: tiny.tiny_gptj_path,
        TINY_LLAMA: tiny.tiny_llama_path,
        SMOLLM2: lambda: gguf.gguf_folder(gguf.smollm2_gguf(), SMOLLM2.removeprefix("builtin:")),
    }
    if name not in builders:
        raise UserError(f"model.name_or_path={name!r}: no such builtin model (there are {', '.join(builders)})")
    return builders[name]()


def resolve_model(cfg: ModelConfig) -> str:
    """The local folder or Hub id to load. Builtin models are built, and GGUF files converted, on first use into the
    model cache. Fails fast on a missing local path."""
    if cfg.name_or_path.startswith("builtin:"):
        return str(builtin_path(cfg.name_or_path))
    path = os.path.expanduser(cfg.name_or_path)
    if path.endswith(".gguf"):
        from lora_train.gguf import gguf_folder

        return str(gguf_folder(Path(path)))
    looks_local = path.startswith((".", "/", "~")) or os.path.exists(path) or path.count("/") != 1
    if looks_local:
        if not Path(path).is_dir():
            raise UserError(f"model.name_or_path={cfg.name_or_path!r}: no such folder "
                            f"(a Hub id looks like 'EleutherAI/gpt-j-6b'; a local model is a folder with config.json)")
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"model.name_or_path={cfg.name_or_path!r}: folder has no config.json, not a model folder")
    return path


def bnb_config(cfg: QuantConfig):
    """The BitsAndBytesConfig for `quant`, or None to load the base unquantized."""
    from transformers import BitsAndBytesConfig

    if cfg.mode == QuantMode.none:
        return None
    if cfg.mode == QuantMode.int8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.mode.value,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(compute_dtype(cfg)),
        bnb_4bit_quant_storage=quant_storage(cfg),
    )


def quant_storage(cfg: QuantConfig):
    """quant.quant_storage as a torch dtype; auto follows the launcher (see shards_weights)."""
    import torch

    if cfg.quant_storage != DType.auto:
        return torch_dtype(cfg.quant_storage)
    return torch_dtype(compute_dtype(cfg)) if shards_weights() else torch.uint8


def shards_weights(env=os.environ) -> bool:
    """FSDP and ZeRO-3 split every weight across processes, quantized ones included (see model.quant_storage)."""
    return env.get(_USE_FSDP, "").lower() == "true" or env.get(_DS_ZERO_STAGE) == "3"


def device_map(env=os.environ):
    """Where from_pretrained puts the base: each process's own GPU for data parallel; nothing for FSDP / ZeRO-3,
    which place (and shard) the weights themselves and reject a device_map."""
    import torch

    if not torch.cuda.is_available() or shards_weights(env):
        return None
    return {"": int(env.get("LOCAL_RANK", 0))}


def peft_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    from lora_train.schemas import LoraBias, LoraInit

    targets = cfg.target_modules
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias=LoraBias(cfg.bias).value,  # PEFT compares and saves a plain string
        task_type="CAUSAL_LM",
        # LoftQ, PiSSA and OLoRA start from PEFT's default and are then initialised by lora_train.training.init,
        # which works on a 4-bit base on any device (PEFT's own paths need CUDA or refuse a 4-bit base).
        init_lora_weights="gaussian" if cfg.init == LoraInit.gaussian else True,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
    )


def load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"model.name_or_path={cfg.name_or_path!r}: could not load the tokenizer: {e}") from e
    if tok.pad_token is None:
        # GPT-J's tokenizer has no pad token. Reusing EOS is safe here because labels come from the data (loss mask
        # built per token, padding added as -100 by the collator), never from "token == pad"; the pre-flight check
        # in train.py proves it on a real batch. No new token is added, so inference sees the same vocabulary.
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_base(path: str, model_cfg: ModelConfig, quant_cfg: QuantConfig, device_map=None):
    """The base model, quantized per `quant`."""
    from transformers import AutoModelForCausalLM

    quant = bnb_config(quant_cfg)
    dtype = torch_dtype(model_cfg.dtype)
    if dtype == "auto" and quant is not None:
        dtype = torch_dtype(compute_dtype(quant_cfg))  # non-quantized layers (embeddings, norms) in compute dtype
    from lora_train.memory import freed_memory_returned

    try:
        with freed_memory_returned():  # a 4-bit load's freed full-precision temporaries go back to the system
            return AutoModelForCausalLM.from_pretrained(
                path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code,
                quantization_config=quant, dtype=dtype, device_map=device_map,
            )
    except (OSError, ValueError) as e:
        raise UserError(f"model.name_or_path={model_cfg.name_or_path!r}: could not load the model: {e}") from e


REAL_MODEL_QUICKSTART = "lora-train experiment=smollm2_sample run_name=smollm2-sample"


def random_model_note(name_or_path: str) -> str | None:
    """The line shown wherever a builtin model's text appears: its weights are random, so its text (and a small
    adapter's on top of it) is expected to be noise; None for any other model."""
    if str(name_or_path) not in (TINY_GPTJ, TINY_LLAMA):  # SmolLM2 is builtin too, and real
        return None
    return (f"note: {name_or_path} is a tiny model with random weights, built locally to test the pipeline: its "
            f"text is noise whatever an adapter learned. A real model: {REAL_MODEL_QUICKSTART}")
