"""Typed config schemas.

Every YAML under conf/ is validated against these dataclasses when Hydra composes it: a wrong type, an unknown
key or a bad enum choice fails at compose time with a message naming the key, before any model is loaded.
OmegaConf does not accept ``Literal``, so choices are ``Enum``s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

# The sentinel that names the embedded tiny GPT-J (built locally, cached); see lora_train/tiny.py.
TINY_GPTJ = "builtin:tiny-gptj"
# The sentinel that names the bundled GPT4All-J-style sample rows; see lora_train/data_files/.
SAMPLE_DATA = "builtin:sample"


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


class DataFormat(str, Enum):
    gpt4all = "gpt4all"  # columns prompt / response [/ source]
    alpaca = "alpaca"  # columns instruction / input / output (input may be empty)
    chat = "chat"  # a list of {role, content} messages, or ShareGPT's {from, value} turns


class FilterStep(str, Enum):
    # Curation steps (lora_train/filters.py), applied in the order data.filters lists them.
    clean = "clean"  # drop null, non-string or empty prompt/response, and one-character prompts
    breezy = "breezy"  # drop responses containing "AI language model" (GPT4All-J v1.1-breezy)
    jazzy = "jazzy"  # drop refusals listed in data.refusal_phrases (v1.2-jazzy)
    dedup = "dedup"  # drop exact and near duplicates (MinHash LSH at data.dedup_threshold; v1.3-groovy)
    max_length = "max_length"  # drop examples longer than data.max_length tokens instead of truncating them


# The GPT4All-J dataset revisions as curation chains over a user's own data (lora_train/filters.py CHAINS).
# Functional form because the names (what users type, data.curation=v1.3-groovy) contain dots and hyphens.
Curation = Enum("Curation", {n: n for n in ["v1.0", "v1.1-breezy", "v1.2-jazzy", "v1.3-groovy"]}, type=str)


class DedupKey(str, Enum):
    pair = "pair"  # prompt and response together: a duplicate is the same exchange
    prompt = "prompt"  # the prompt (user turns) alone: one response per question
    response = "response"  # the response (assistant turns) alone


# Case-insensitive substrings of a response that mark a refusal (the v1.2-jazzy step); override data.refusal_phrases.
REFUSAL_PHRASES = [
    "I'm sorry, I can't", "I'm sorry, I cannot", "I'm sorry, but I can't", "I'm sorry, but I cannot",
    "I am sorry, but I cannot", "I cannot help with", "I cannot provide", "I cannot answer", "I cannot assist",
    "I can't help with", "I can't provide", "I can't answer", "I can't assist", "I'm unable to", "I am unable to",
    "I'm not able to provide", "I apologize, but I cannot",
]


@dataclass
class ModelConfig:
    name: str = "tiny-gptj"  # short name used in run names and model cards
    name_or_path: str = TINY_GPTJ  # Hub id, local folder, or the builtin tiny GPT-J
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


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    # PEFT module names, or ["all-linear"] for every linear layer except the output head.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: str = "none"


@dataclass
class DataConfig:
    name: str = "sample"  # short name used in run names and model cards
    # Hub dataset id; a local .jsonl/.json/.parquet/.csv file, a glob of them or a folder of them; or the bundled sample
    source: str = SAMPLE_DATA
    revision: Optional[str] = None  # Hub dataset revision, e.g. v1.3-groovy for the GPT4All-J data
    split: str = "train"  # split read from a Hub dataset
    streaming: bool = False  # read, curate and tokenize row by row into an on-disk dataset: data larger than memory
    format: DataFormat = DataFormat.gpt4all
    # The format's column names -> your file's, e.g. {prompt: question, response: answer} or {messages: conversations}
    columns: dict[str, str] = field(default_factory=dict)
    # How turns become text: gpt4all (prompt + "\n" + response + EOS), alpaca (### Instruction/### Response),
    # chat_template (the tokenizer's), or your own prompt template containing {prompt}.
    template: str = "gpt4all"
    curation: Optional[Curation] = None  # a GPT4All-J revision's filter chain, run before data.filters
    filters: list[FilterStep] = field(default_factory=list)  # curation steps, applied in order
    refusal_phrases: list[str] = field(default_factory=lambda: list(REFUSAL_PHRASES))  # what jazzy drops
    dedup_threshold: float = 0.8  # estimated Jaccard similarity (word 3-grams) at or above which rows are duplicates
    dedup_key: DedupKey = DedupKey.pair  # which text two rows must share to be duplicates
    max_row_bytes: int = 1_000_000  # a longer row is skipped as malformed, never loaded whole
    val_fraction: float = 0.05  # held out for eval loss (the GPT4All-J recipe used 5%)
    max_length: int = 1024  # tokens per example, prompt + response + EOS
    # A prompt may take at most this share of max_length, so that response tokens remain (the original recipe: 1/2).
    max_prompt_fraction: float = 0.5
    strict: bool = False  # a malformed row is an error instead of a counted skip
    max_rows: Optional[int] = None  # read at most this many rows (quick experiments)
    # Reuse the tokenized examples of an earlier run on the same data, config and tokenizer (lora_train/data_cache.py).
    cache: bool = True


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
    # estimated peak without it (lora_train/estimate.py) fits in 80% of the memory free on this device, else on.
    gradient_checkpointing: Any = False
    optim: str = "adamw_torch"  # any transformers optimizer name, e.g. paged_adamw_8bit on a GPU
    logging_steps: int = 5
    eval_steps: Optional[int] = None  # None = evaluate once per epoch
    save_steps: Optional[int] = None  # None = no intermediate checkpoints
    save_total_limit: int = 2  # complete checkpoints kept in adapters/.<run_name>.work (<= 0: all)
    # Optimizer steps with NaN/inf loss or gradients that are skipped (not applied) before training stops; 0 = stop at
    # the first one. The last good checkpoint is kept either way.
    max_nonfinite_steps: int = 0
    # A batch's examples laid out without padding, each attending only to itself (lora_train/packing.py): same
    # examples per step and same loss as padded batches, without computing on pad tokens.
    packing: bool = True
    group_by_length: bool = True  # unpacked batches only: batch examples of similar length together, less padding
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
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
    overwrite: bool = False  # replace an existing adapter folder of the same run_name
    # false: start fresh; true: continue the newest complete checkpoint of run_name (same data order and schedule);
    # auto: like true, or a fresh start when there is no checkpoint; or the path of one checkpoint folder.
    resume: str = "false"


def register() -> None:
    """Register the schemas so that conf/*.yaml can name them in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainJob)


register()
