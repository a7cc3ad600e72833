"""Typed schema of `lora-eval` (conf/eval.yaml), registered in Hydra's ConfigStore when imported.

`model` and `quant` default to None: the base is then read from the adapters' saved lora_train.yaml, so every
adapter is evaluated on exactly the base it was trained on, and the base row of the table is that same base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from lora_train.schemas.model import ModelConfig, QuantConfig

# The GPT4All-J model card's common-sense table, in its column order (lm-eval task names).
CARD_TASKS = ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


@dataclass
class HarnessConfig:
    """EleutherAI's lm-evaluation-harness: which tasks, how many examples, which metric goes in the table."""

    tasks: list[str] = field(default_factory=lambda: list(CARD_TASKS))  # lm-eval task names; [] = no harness run
    include_path: Optional[str] = None  # a folder of task YAMLs of your own (added to lm-eval's tasks)
    limit: Optional[float] = None  # examples per task (a share of the task when < 1); None = all
    batch_size: int = 8  # sequences per forward pass
    num_fewshot: Optional[int] = None  # None = each task's own default (0-shot for the card's tasks)
    # task -> metric shown in the table, overriding the default (the card's choice; acc_norm, else acc).
    metrics: dict[str, str] = field(default_factory=dict)
    bootstrap_iters: int = 1000  # bootstrap resamples for the standard error of non-mean metrics (0 = none)


@dataclass
class LossConfig:
    """Mean token loss and perplexity of every model on held-out data (loss on the response and its EOS)."""

    enabled: bool = True
    # A .jsonl file of rows in the adapters' data format; None = each adapter's own validation split, rebuilt
    # from its saved data config and seed (the rows its training run evaluated on).
    source: Optional[str] = None
    max_rows: Optional[int] = None  # use at most this many examples of each dataset
    batch_size: int = 8


@dataclass
class SamplesConfig:
    """The same prompts answered by the base and by each adapter (greedy), written as samples.md."""

    prompts: list[str] = field(default_factory=list)  # your prompts; [] = the first `count` validation prompts
    count: int = 3  # validation prompts used when `prompts` is empty; 0 = no samples
    max_new_tokens: int = 64


@dataclass
class EvalJob:
    """The primary config of `lora-eval`."""

    model: Optional[ModelConfig] = None  # None = the base recorded in the adapters' lora_train.yaml
    quant: Optional[QuantConfig] = None  # None = the quantization the adapters were trained with
    adapters: list[str] = field(default_factory=list)  # adapter folders, each a row; `latest` = newest in adapters_dir
    adapters_dir: str = "adapters"  # where `latest` looks: the newest finished adapter folder in it
    progress: Optional[bool] = None  # progress bars; None = only when stderr is a terminal (never into log files)
    base: bool = True  # also evaluate the base model alone (its own row)
    output: str = "evals"  # results.md, results.json and samples.md go here (a new folder, written atomically)
    overwrite: bool = False  # replace an existing output folder (refused otherwise, before anything loads)
    update_cards: bool = True  # write the table into each adapter's README.md (replacing an earlier one)
    seed: int = 42  # seeds lm-eval (python, numpy, torch, few-shot sampling)
    allow_pickle: bool = False  # accept adapter_model.bin (a pickle, which can run code when loaded)
    eval: HarnessConfig = field(default_factory=HarnessConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)


def register() -> None:
    ConfigStore.instance().store(name="eval_schema", node=EvalJob)


register()
