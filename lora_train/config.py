"""Composing configs from Python (tests, notebooks, other programs) exactly as the console scripts do."""

from __future__ import annotations

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

# Importing the schemas registers every command's schema, so compose() works for every command.
import lora_train.schemas  # noqa: F401


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The composed config of one command (`train`, `curate`, `merge`, `generate`, `serve`, `eval`), with
    command-line style overrides applied."""
    GlobalHydra.instance().clear()
    with initialize_config_module("lora_train.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


Job = TypeVar("Job")


def typed(cfg: DictConfig | Job, schema: type[Job]) -> Job:
    """A command's typed job object from its composed config; library callers may pass the job object itself."""
    return cfg if isinstance(cfg, schema) else OmegaConf.to_object(cfg)
