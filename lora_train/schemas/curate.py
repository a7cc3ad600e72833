"""Typed schema of `lora-data` (conf/curate.yaml): load, curate, report and export data without training.

Registered in Hydra's ConfigStore when imported; lora_train/data/curate.py imports it before composing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from lora_train.schemas.data import DataConfig
from lora_train.schemas.model import ModelConfig


@dataclass
class CurateJob:
    """The primary config of `lora-data`; `data` and `model` are the same groups `lora-train` uses."""

    model: ModelConfig = field(default_factory=ModelConfig)  # only its tokenizer is loaded (token statistics)
    data: DataConfig = field(default_factory=DataConfig)
    # Where the curated rows go: .jsonl or .parquet (by the extension), written as they were read. None = report only.
    output: Optional[str] = None
    # The JSON report and the token-length histogram; None = beside `output` (<stem>.report.json, <stem>.lengths.png).
    report: Optional[str] = None
    histogram: Optional[str] = None
    tokens: bool = True  # load the tokenizer for token-length statistics (false: counts only, no model files needed)
    show: int = 20  # offending rows listed per step and for skipped rows
    overwrite: bool = False  # replace existing output files


def register() -> None:
    ConfigStore.instance().store(name="curate_schema", node=CurateJob)


register()
