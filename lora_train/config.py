"""Composing configs from Python (tests, notebooks, other programs) exactly as the console scripts do."""

from __future__ import annotations

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

# Each command's schema module registers the schema its primary config names, so compose() works for every command.
import lora_train.curate_schema  # noqa: F401  (lora-data)
import lora_train.eval_schema  # noqa: F401  (lora-eval)
import lora_train.infer_schema  # noqa: F401  (lora-generate, lora-serve)
import lora_train.merge_schema  # noqa: F401  (lora-merge)
import lora_train.schema  # noqa: F401  (lora-train)


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
