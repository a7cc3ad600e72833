"""Composing configs from Python (tests, notebooks, other programs) exactly as the console scripts do, and the one
check of overrides that Hydra lacks (settings of a config group that is unset)."""

from __future__ import annotations

import functools
import re
import sys
from importlib import resources
from typing import TypeVar

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

# Importing the schemas registers every command's schema, so compose() works for every command.
import lora_train.schemas  # noqa: F401
from lora_train.errors import UserError


def config_groups(config_name: str) -> dict[str, tuple[list[str], str | None, str]]:
    """The config groups in a command's defaults list: group -> (its choices, the default choice or None when the
    command leaves it null, the comment beside it)."""
    conf = resources.files("lora_train.conf")
    text = conf.joinpath(f"{config_name}.yaml").read_text()
    out = {}
    for entry in (yaml.safe_load(text) or {}).get("defaults", []):
        if not isinstance(entry, dict):
            continue
        for key, value in entry.items():
            group = key.removeprefix("optional ").strip()
            if " " in group or "/" in group or not conf.joinpath(group).is_dir():
                continue  # `override hydra/...`: Hydra's own groups
            choices = sorted(f.name[:-5] for f in conf.joinpath(group).iterdir() if f.name.endswith(".yaml"))
            comment = re.search(rf"-\s*{re.escape(key)}:[^#\n]*#\s*(.*)", text)
            out[group] = (choices, value, comment.group(1).strip() if comment else "")
    return out


def unset_groups(config_name: str) -> dict[str, tuple[list[str], str]]:
    """The config groups whose node a command's config leaves null: group -> (its choices, what null means there)."""
    return {g: (choices, comment or "null") for g, (choices, default, comment) in config_groups(config_name).items()
            if default is None and g in _schema_nodes(config_name)}


def _schema_nodes(config_name: str) -> set[str]:
    """Top-level keys of the command's schema (an `optional experiment` group is not one of them)."""
    from hydra.core.config_store import ConfigStore

    return set(ConfigStore.instance().load(f"{config_name}_schema.yaml").node.keys())


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Overrides that Hydra answers with a stack trace rather than a message, answered with a message instead:
    `quant.mode=none` where the command's `quant` group is null (lora-serve, lora-generate, lora-eval: no node to
    change, an AssertionError), `model=null` or `model=0` for any group (a ValueError), and an override Hydra's
    grammar refuses (its message names no override: `model.dtype=Ĝ`, an unquoted letter its lexer does not know)."""
    parser, parsed = OverridesParser.create(), []
    for text in overrides:
        try:
            parsed.append((text, parser.parse_override(text)))
        except HydraException as e:  # Hydra's grammar refuses it; its message names neither the override nor the fix
            key, _, value = text.partition("=")
            raise UserError(f"{text}: Hydra cannot read this override ({e}); to pass the value as text, quote it: "
                            f"'{key}=\"{value}\"'") from None
    groups = config_groups(config_name)
    if not groups:
        return
    unset = unset_groups(config_name)
    chosen = {o.key_or_group for _, o in parsed if not o.is_delete()}
    for text, o in parsed:
        group, _, rest = o.key_or_group.partition(".")
        if not rest and group in groups and not o.is_sweep_override() and not isinstance(o.value(), (str, list)):
            choices, default, _ = groups[group]
            raise UserError(f"{text}: {group} is a config group: give the name of one of its configs "
                            f"({', '.join(choices)})" + (f"; {group} is already null by default: drop {text}"
                                                         if default is None and o.value() is None else ""))
        if not rest or group not in unset or group in chosen:
            continue
        choices, meaning = unset[group]
        value = None if o.is_sweep_override() else o.value()
        fix = f"{group}={value}" if str(value) in choices else f"{group}=<{'|'.join(choices)}> {text}"
        raise UserError(f"{text}: no {group} config is selected here ({group}: {meaning}), so {o.key_or_group} has "
                        f"nothing to change; write {fix} instead")


# Hydra's options that take a value (`--cfg job`, `-p model`): their values are no overrides.
_VALUED_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp", "--config-name", "-cn",
                 "--config-dir", "-cd", "--experimental-rerun"}


def command_line_overrides(argv: list[str]) -> list[str]:
    """The overrides on a command line: every word that is neither a flag nor a flag's value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _VALUED_FLAGS
        else:
            out.append(arg)
    return out


def checked_overrides(config_name: str):
    """Put above a command's @hydra.main: the command line's overrides get check_overrides() first, answered with one
    `error:` line and exit status 2, as every other user error."""

    def decorate(main):
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            if not args and not kwargs:  # the console script: the overrides are on the command line
                try:
                    check_overrides(config_name, command_line_overrides(sys.argv[1:]))
                except UserError as e:
                    print(f"error: {e}", file=sys.stderr)
                    sys.exit(2)
            return main(*args, **kwargs)

        return wrapper

    return decorate


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The composed config of one command (`train`, `curate`, `merge`, `generate`, `serve`, `eval`), with
    command-line style overrides applied. Raises UserError for settings of an unset group (check_overrides), Hydra's
    and OmegaConf's exceptions for the rest."""
    check_overrides(config_name, list(overrides or []))
    GlobalHydra.instance().clear()
    with initialize_config_module("lora_train.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


Job = TypeVar("Job")


def typed(cfg: DictConfig | Job, schema: type[Job]) -> Job:
    """A command's typed job object from its composed config; library callers may pass the job object itself."""
    return cfg if isinstance(cfg, schema) else OmegaConf.to_object(cfg)
