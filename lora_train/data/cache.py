"""Tokenized examples cached across runs (`data.cache=true`, the default).

A second run on the same data (a resume after preemption, a sweep, another learning rate) skips reading, curation
and tokenization, which for the GPT4All-J data is most of the start-up: MinHash dedup of 800k rows takes minutes.

The key covers everything that decides the examples: the data config (less the keys that act after tokenization:
name, val_fraction, streaming), the source's identity (path and content hash of every local file: reading is a
second per GB, and modification times are too coarse to notice a quick rewrite; a Hub id with its pinned revision),
the tokenizer's saved files, the versions of `tokenizers` and `transformers`, and a hash of the source code that turns
rows into examples (every module of lora_train/data and the data schema): any change to that code, an upgrade or a
git checkout, is a miss, so examples built by older code are never reused. A Hub source without `data.revision` is not
cached: the Hub may change under the same name.

Entries live in <cache root>/data/<key>/ (the cache root of model_cache.py: $LORA_TRAIN_CACHE, else ~/.cache/lora_train).
Each is written to a temporary folder and renamed into place, so a crash or a concurrent writer never leaves a half
entry; an unreadable entry counts as a miss and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

from lora_train.data.sources import is_local, local_files
from lora_train.schemas import DataConfig

AFTER_TOKENIZATION = {"name", "val_fraction", "streaming"}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for f in sorted(Path(tmp).iterdir()):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def code_files() -> list[Path]:
    """The source files whose code decides what a data config turns into: every module of this package (reading,
    formats, curation, templates, tokenization, this key) and the data schema (defaults, refusal phrases). Hashing the
    whole package rather than a hand-picked list keeps a module added later covered."""
    from lora_train.schemas import data as data_schema

    return sorted(Path(__file__).parent.glob("*.py")) + [Path(data_schema.__file__)]


def code_digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def key(cfg: DataConfig, tokenizer) -> str | None:
    """The cache key of these examples, or None when they must not be cached."""
    import tokenizers
    import transformers

    if not cfg.cache:
        return None
    if is_local(cfg.source):
        source = {"files": [(str(p.resolve()), _file_digest(p)) for p in local_files(cfg)]}
    elif cfg.revision:
        source = {"hub": cfg.source, "revision": cfg.revision, "split": cfg.split}
    else:
        return None
    config = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in AFTER_TOKENIZATION}
    blob = json.dumps({"code": code_digest(code_files()), "tokenizers": tokenizers.__version__,
                       "transformers": transformers.__version__, "config": config, "source": source,
                       "tokenizer": _tokenizer_digest(tokenizer)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def folder(k: str) -> Path:
    from lora_train.model_cache import cache_root

    return cache_root() / "data" / k


def load(k: str | None):
    """(Dataset, report dict) from the cache, or None."""
    if k is None or not (folder(k) / "report.json").is_file():
        return None
    from datasets import load_from_disk

    try:
        report = json.loads((folder(k) / "report.json").read_text())
        return load_from_disk(str(folder(k) / "examples")), report
    except (OSError, ValueError):
        return None  # damaged entry: rebuilt and replaced by store()


def store(k: str | None, dataset, report) -> Path | None:
    """Save the examples and their report under `k`; returns the entry, or None when nothing was stored (a failure
    to write only costs the next run the rebuild)."""
    if k is None:
        return None
    final, tmp = folder(k), None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{k}.", dir=final.parent))
        dataset.save_to_disk(str(tmp / "examples"))
        (tmp / "report.json").write_text(json.dumps(asdict(report)))
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)  # a damaged entry that load() could not read
        os.rename(tmp, final)  # another run may have stored the same entry first: then ours is dropped
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return final if (final / "report.json").is_file() else None
    return final
