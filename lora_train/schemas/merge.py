"""Typed schema of `lora-merge` (conf/merge.yaml): merge one adapter into a full model, or combine several adapters.

Registered in Hydra's ConfigStore when imported; lora_train/merging/merge.py imports it before composing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from hydra.core.config_store import ConfigStore

from lora_train.schemas.model import DType


class MergeBase(str, Enum):
    # The weights the LoRA delta is added to, for an adapter trained on a quantized base.
    dequantized = "dequantized"  # the NF4/FP4/int8-rounded weights the adapter was trained against
    original = "original"  # the checkpoint's own 16/32-bit weights


class Combination(str, Enum):
    linear = "linear"  # PEFT: weighted sums of the A's and of the B's (same ranks; not the sum of the deltas)
    cat = "cat"  # PEFT: A's and B's concatenated: exactly the weighted sum of the deltas, rank = sum of ranks
    svd = "svd"  # PEFT: the weighted sum of the deltas, truncated to svd_rank by SVD
    ties = "ties"  # PEFT: TIES (trim to density, elect signs, disjoint mean) on the A's and B's
    dare_linear = "dare_linear"  # PEFT: DARE (random drop to density, rescale) then linear
    dare_ties = "dare_ties"  # PEFT: DARE then TIES sign election
    magnitude_prune = "magnitude_prune"  # PEFT: keep the largest `density` share of each, then linear


@dataclass
class MergeOptions:
    base: MergeBase = MergeBase.dequantized  # measured best (README, "Which base to merge into")
    verify: bool = True  # compare the merged model with the adapter on its training-time base before publishing
    force: bool = False  # publish even when verification fails its thresholds
    verify_examples: int = 16  # held-out examples run through both models
    verify_max_length: int = 256  # tokens per verification example
    # Verification fails when any of these is exceeded (None = not checked).
    max_mean_kl: Optional[float] = 1e-3  # mean per-token KL(adapter || merged), nats
    min_top1_agreement: Optional[float] = 0.99  # share of positions where both models predict the same token
    max_abs_logit_diff: Optional[float] = None  # largest |logit difference| over all positions and tokens
    max_eval_loss_increase: Optional[float] = 0.01  # merged eval loss minus adapter eval loss, nats
    max_shard_size: str = "2GB"  # safetensors shard size of the merged model


@dataclass
class MergeJob:
    """The primary config of `lora-merge`."""

    adapter: Optional[str] = None  # an adapter folder to merge into a full model; `latest` = newest in adapters_dir
    adapters: list[str] = field(default_factory=list)  # adapter folders to combine into a new adapter (`latest` too)
    adapters_dir: str = "adapters"  # where `latest` looks: the newest finished adapter folder in it
    progress: Optional[bool] = None  # progress bars; None = only when stderr is a terminal (never into log files)
    weights: list[float] = field(default_factory=list)  # one per adapter (default 1.0 each)
    combination: Combination = Combination.linear
    density: Optional[float] = None  # ties / dare_* / magnitude_prune: share of each delta kept, in (0, 1]
    svd_rank: Optional[int] = None  # svd: rank of the result (default the largest input rank)
    majority_sign_method: str = "total"  # ties / dare_ties: "total" or "frequency"
    output: Optional[str] = None  # the folder to write (a full model, or an adapter when combining)
    # Base model folder or Hub id; default: read from the adapter's lora_train.yaml. (Not `model=`: that name is
    # lora-train's config group, which Hydra would try to select.)
    base_model: Optional[str] = None
    base_revision: Optional[str] = None  # Hub revision of base_model
    dtype: DType = DType.auto  # dtype of the merged weights; auto = the base checkpoint's own
    overwrite: bool = False  # replace an existing output folder
    allow_pickle: bool = False  # accept pickle (.bin) weights, which can run code when loaded
    seed: int = 42  # seeds dare_* random dropping
    merge: MergeOptions = field(default_factory=MergeOptions)


def register() -> None:
    ConfigStore.instance().store(name="merge_schema", node=MergeJob)


register()
