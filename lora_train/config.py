"""Composing configs from Python (tests, notebooks, other programs) exactly as the console scripts do."""

from __future__ import annotations

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import lora_train.schema  # noqa: F401  (registers the schemas the configs name)
import lora_train.infer_schema  # noqa: F401  (registers generate_schema and serve_schema)


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The composed config of one command (`train`, ...), with command-line style overrides applied."""
    GlobalHydra.instance().clear()
    with initialize_config_module("lora_train.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
