"""Reading a model checkpoint one tensor at a time and writing one shard at a time, so merging a model needs about
one shard of memory instead of the whole model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from lora_train.errors import UserError

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def checkpoint_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The weight files of a transformers model folder, safetensors preferred; pickle only when allowed."""
    for index, single in ((SAFE_INDEX, "model.safetensors"), (BIN_INDEX, "pytorch_model.bin")):
        if (folder / index).is_file():
            files = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            paths = [folder / f for f in files]
        elif (folder / single).is_file():
            paths = [folder / single]
        else:
            continue
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"base model {folder}: weight files {missing} listed in {index} are missing")
        if single.endswith(".bin") and not allow_pickle:
            raise UserError(f"base model {folder} has only pickle weights ({paths[0].name}), which can run code when "
                            "loaded; convert them to safetensors or pass allow_pickle=true if you trust them")
        return paths
    raise UserError(f"base model {folder}: no model.safetensors or pytorch_model.bin (not a model folder?)")


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """name -> shape for every tensor, from the safetensors headers (pickle files are read in full)."""
    from safetensors import safe_open

    shapes = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        else:
            shapes.update({k: tuple(v.shape) for k, v in _load_pickle(path).items()})
    return shapes


def _load_pickle(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, "object"]]:
    """(name, tensor) for every tensor of the checkpoint, reading one at a time."""
    from safetensors import safe_open

    for path in files:
        if path.suffix != ".safetensors":
            yield from _load_pickle(path).items()
            continue
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
        for name in names:
            # Reopened per tensor: a long-lived memory map keeps every page read so far resident, and the peak
            # memory would grow to the size of the input file.
            with safe_open(str(path), framework="pt") as f:
                yield name, f.get_tensor(name)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise UserError(f"merge.max_shard_size={text!r}: use a size like 2GB, 500MB or 100000000")
    unit = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m[2]]
    return int(float(m[1]) * unit)


class ShardWriter:
    """Collects tensors and writes a safetensors shard whenever the next tensor would exceed the shard size; at the
    end names the shards and writes the index the way transformers' save_pretrained does."""

    def __init__(self, folder: Path, max_shard_bytes: int):
        self.folder, self.max = folder, max_shard_bytes
        self.pending: dict = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.folder / f".shard-{len(self.shards)}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        if n == 1:
            self.shards[0][0].rename(self.folder / "model.safetensors")
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (path, keys) in enumerate(self.shards, start=1):
            name = f"model-{i:05d}-of-{n:05d}.safetensors"
            path.rename(self.folder / name)
            names.append(name)
            weight_map.update({k: name for k in keys})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return names
