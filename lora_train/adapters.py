"""Adapter folders as later commands see them: what base they need, and whether a given base fits them.

Every command that puts an adapter to work (merge, generate, serve, eval) reads it through `read_adapter` and
checks it with `check_against_config` (before loading the base) and `check_against_model` (after), so an adapter
for another base is refused with a message naming both, instead of failing deep inside PEFT or, worse, loading
with silently ignored weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lora_train.errors import UserError
from lora_train.schemas import TrainJob

LATEST = "latest"  # the alias every command that takes adapters resolves to the newest finished one; not a run name
BASE_FILE = "base_model.json"  # written next to the adapter at training time: the base's shape
# adapter_config.json `init_lora_weights` of an adapter still paired with the residual base it was initialised
# against: PEFT saves PiSSA/OLoRA/CorDA/LoftQ adapters so unless told to convert them, and lora-train marks its own
# checkpoints of such runs so. On the original base such an adapter computes something else: refused by name.
RESIDUAL_MARKS = ("pissa", "olora", "corda", "loftq")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class AdapterInfo:
    folder: Path
    name: str
    peft_config: dict
    job: TrainJob | None  # the lora-train config it was trained with (None for adapters made elsewhere)
    base: dict  # base_model.json, or {} when absent
    # module name -> (in_features, out_features, rank) from the weight file's header
    modules: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def base_name_or_path(self) -> str:
        if self.job is not None:
            return self.job.model.name_or_path
        return self.peft_config.get("base_model_name_or_path") or ""


def base_summary(config) -> dict:
    """The facts about a base model that decide whether an adapter fits it (from a transformers config)."""
    return {
        "model_type": getattr(config, "model_type", None),
        "architectures": list(getattr(config, "architectures", None) or []),
        "hidden_size": getattr(config, "hidden_size", None) or getattr(config, "n_embd", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None),
        "vocab_size": getattr(config, "vocab_size", None),
    }


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, without reading the weights."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100 * 2**20:
            raise ValueError("not a safetensors file (bad header length)")
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def read_adapter(folder: str | Path, allow_pickle: bool = False) -> AdapterInfo:
    """Read and check an adapter folder's metadata; every problem is a UserError naming the folder and file."""
    folder = Path(folder)
    name = folder.name
    if not folder.is_dir():
        raise UserError(f"adapter {name!r}: {folder} is not a folder")
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"adapter {name!r}: {cfg_file} is missing (not a PEFT adapter folder)")
    try:
        peft_config = json.loads(cfg_file.read_text())
        assert isinstance(peft_config, dict)
    except (ValueError, AssertionError, UnicodeDecodeError) as e:
        raise UserError(f"adapter {name!r}: {cfg_file} is not a JSON object ({e})") from e
    if peft_config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"adapter {name!r}: peft_type {peft_config.get('peft_type')!r} is not LoRA")
    mark = peft_config.get("init_lora_weights")
    if isinstance(mark, str) and mark.lower().startswith(RESIDUAL_MARKS):
        raise UserError(
            f"adapter {name!r} was initialised with {mark} against a residual base and saved without conversion "
            f"(init_lora_weights={mark!r} in {cfg_file}): on the original base it computes something else. Use "
            "the converted adapter lora-train writes to adapters/<run_name> (its checkpoints are not converted), or "
            "convert it with PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=...)")

    weights = folder / "adapter_model.safetensors"
    modules: dict[str, tuple[int, int, int]] = {}
    if weights.is_file():
        try:
            shapes = _safetensors_shapes(weights)
        except (OSError, ValueError) as e:
            raise UserError(f"adapter {name!r}: {weights} is unreadable ({e})") from e
        a_shapes, b_shapes = {}, {}
        for key, shape in shapes.items():
            m = _LORA_KEY.match(key)
            if m and len(shape) == 2:
                (a_shapes if m["ab"] == "A" else b_shapes)[m["module"]] = shape
        for module, (r, fan_in) in a_shapes.items():
            if module not in b_shapes:
                raise UserError(f"adapter {name!r}: {weights} has lora_A but no lora_B for {module}")
            fan_out, r_b = b_shapes[module]
            if r_b != r:
                raise UserError(f"adapter {name!r}: {weights}: rank mismatch in {module} (A {r}, B {r_b})")
            modules[module] = (fan_in, fan_out, r)
        if not modules:
            raise UserError(f"adapter {name!r}: {weights} holds no LoRA weights")
    elif (folder / "adapter_model.bin").is_file():
        if not allow_pickle:
            raise UserError(f"adapter {name!r}: only adapter_model.bin (a pickle, which can run code when loaded) "
                            "was found; convert it to safetensors or allow pickle weights explicitly")
    else:
        raise UserError(f"adapter {name!r}: no adapter_model.safetensors in {folder}")

    job = None
    yaml_file = folder / "lora_train.yaml"
    if yaml_file.is_file():
        try:
            job = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainJob), OmegaConf.load(yaml_file)))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError, TypeError) as e:  # a hand-edited or foreign file
            raise UserError(f"adapter {name!r}: {yaml_file} is not a valid lora-train config ({e})") from e
    base = {}
    base_file = folder / BASE_FILE
    if base_file.is_file():
        try:
            base = json.loads(base_file.read_text())
        except ValueError as e:
            raise UserError(f"adapter {name!r}: {base_file} is not JSON ({e})") from e
    return AdapterInfo(folder=folder, name=name, peft_config=peft_config, job=job, base=base, modules=modules)


def check_against_config(info: AdapterInfo, base_config, base_label: str) -> None:
    """Compare the adapter's recorded base with a base model's config, before loading any weight."""
    have = base_summary(base_config)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        want = info.base.get(key)
        if want is not None and have.get(key) is not None and want != have[key]:
            raise UserError(
                f"adapter {info.name!r} was trained on a base with {key}={want} "
                f"({info.base_name_or_path or 'unknown base'}), but {base_label} has {key}={have[key]}"
            )


def check_against_model(info: AdapterInfo, model, base_label: str) -> None:
    """Every module the adapter adapts must exist in the base with the same in/out features."""
    import torch

    names = dict(model.named_modules())
    for module, (fan_in, fan_out, _r) in sorted(info.modules.items()):
        target = names.get(module) or names.get(module.removeprefix("model."))
        if target is None:
            raise UserError(f"adapter {info.name!r} adapts {module}, which {base_label} does not have "
                            f"(trained for {info.base_name_or_path or 'another base'})")
        base_layer = getattr(target, "base_layer", target)  # already wrapped by PEFT
        shape = (getattr(base_layer, "in_features", None), getattr(base_layer, "out_features", None))
        if isinstance(base_layer, torch.nn.Embedding):
            shape = (base_layer.num_embeddings, base_layer.embedding_dim)
        if shape != (fan_in, fan_out):
            raise UserError(
                f"adapter {info.name!r}: {module} is {fan_in}->{fan_out} in the adapter but {shape[0]}->{shape[1]} "
                f"in {base_label} (the adapter was trained for {info.base_name_or_path or 'another base'})"
            )


def finished_adapters(adapters_dir: str | Path) -> list[Path]:
    """The finished adapter folders directly under adapters_dir, oldest first. Finished = PEFT's config and weights are
    there; hidden folders (a run's `.name.work` checkpoints, `.name.staging-*` being written) never count."""
    root = Path(adapters_dir).expanduser()
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        cfg = folder / "adapter_config.json"
        if folder.name.startswith(".") or not folder.is_dir() or not cfg.is_file():
            continue
        if not any((folder / w).is_file() for w in ("adapter_model.safetensors", "adapter_model.bin")):
            continue
        # adapter_config.json is written when the run saves its adapter, and renaming the folder into place keeps its
        # time: it dates the run's end, where the folder's own mtime moves whenever a file is added later.
        found.append((cfg.stat().st_mtime, folder.name, folder))
    return [folder for _, _, folder in sorted(found)]


def resolve_latest(ref: str, adapters_dir: str | Path, key: str) -> str:
    """`latest` -> the newest finished adapter folder in adapters_dir (as a path string); any other ref unchanged.
    `key` names the setting for the error when there is none (e.g. `adapter`, `adapters`)."""
    if ref != LATEST:
        return ref
    found = finished_adapters(adapters_dir)
    if not found:
        raise UserError(f"{key}: {LATEST!r} means the newest finished adapter in adapters_dir={str(adapters_dir)!r}, "
                        "but it holds none; train one first (lora-train) or pass adapters_dir=<folder>")
    return str(found[-1])


def latest_name(ref: str, adapters_dir: str | Path) -> str:
    """For commands that name adapters by folder name under adapters_dir (lora-generate): `latest` -> that name."""
    return Path(resolve_latest(ref, adapters_dir, "adapters")).name if ref == LATEST else ref
