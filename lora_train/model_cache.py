"""The on-disk cache of models the project builds itself (the tiny models, GGUF files converted to safetensors).

Each entry is a folder named after what it holds and a key that hashes everything that determines it. It is built in
a hidden temporary folder and renamed into place, with a manifest of its files' sizes written last, so a half-built
entry is never used. A damaged entry (a file missing or cut short, e.g. by a full disk or a hand edit) is removed and
reported by name; the next run builds it again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from lora_train.errors import UserError

MANIFEST = "manifest.json"


def cache_root() -> Path:
    """Where built models are kept: $LORA_TRAIN_CACHE, else $XDG_CACHE_HOME/lora_train, else ~/.cache/lora_train."""
    if os.environ.get("LORA_TRAIN_CACHE"):
        return Path(os.environ["LORA_TRAIN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lora_train"


def _sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _damage(folder: Path) -> str | None:
    """What is wrong with a finished entry, or None when every file the manifest lists is there at its size."""
    try:
        want = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"{folder / MANIFEST} is missing or unreadable"
    for name, size in want.items():
        f = folder / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, {size} were written"
    return None


def cached_folder(name: str, build: Callable[[Path], None]) -> Path:
    """The cache entry `name`, built by `build(folder)` on first use.

    Two processes building at once (e.g. ranks of one torchrun job) both end with the same complete folder: the
    first rename wins and the second result, identical, is dropped.
    """
    target = cache_root() / name
    if target.exists():
        damage = _damage(target)
        if damage is None:
            return target
        shutil.rmtree(target, ignore_errors=True)
        raise UserError(f"the cached model {target} was damaged ({damage}); it was removed and the next run "
                        "builds it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / MANIFEST).write_text(json.dumps(_sizes(tmp), indent=1))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users of the machine
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; its result is identical
            if _damage(target) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
