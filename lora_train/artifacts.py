"""Outputs of every command, written so that nothing half-written ever looks finished and nothing is silently
replaced: adapter (and result) folders are staged in a hidden folder and renamed into place; single files are written
next to their target and renamed over it; an existing target is replaced only with `overwrite=true`; and a target that
could not be written is refused before any work starts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from lora_train.errors import UserError


def check_creatable(path: Path, key: str) -> None:
    """Fail before any work when `path` could not be created: a folder on its way is a file, or the nearest existing
    folder is not writable (no permission, a read-only disk). Writes nothing, so dry runs may call it."""
    parent = Path(os.path.abspath(os.path.expanduser(path))).parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        why = f"{parent} is a file, not a folder" if parent.exists() else f"{parent} is a broken link"
        raise UserError(f"{key}: cannot create {path}: {why}; choose another {key}=...")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{key}: cannot create {path}: {parent} is not writable (permissions or a read-only "
                        f"disk); choose another {key}=... or fix the folder's permissions")


def check_output(path: Path, key: str, overwrite: bool) -> None:
    """A command's output file or folder, checked before any work: refused when it exists (unless overwrite=true) or
    could not be written. Missing parent folders are fine: the write creates them."""
    if path.exists() and not overwrite:
        raise UserError(f"{key}={path} already exists; pass overwrite=true to replace it, or choose another {key}")
    check_creatable(path, key)


def check_writable(final: Path, overwrite: bool, key: str = "run_name") -> None:
    """Fail before any work when the target folder exists and may not be replaced (`key` names the setting that
    picks another name), or could not be created there."""
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; choose another {key}=... or pass overwrite=true to replace it")
    check_creatable(final, "adapters_dir" if key == "run_name" else key)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without an error, removed
    otherwise. Missing parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:  # mkstemp makes the file private; the published one gets ordinary permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write a text file so that a reader never sees it half-written."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def staging_dir(final: Path) -> Path:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    except OSError as e:
        raise UserError(f"{final.parent}: cannot create {final.name} there ({e}); free disk space or fix "
                        f"the folder's permissions") from e
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published folder gets ordinary permissions
    return path


def publish(staging: Path, final: Path, overwrite: bool) -> Path:
    """Move a complete staging folder to `final`. The old folder, if replaced, is removed only after the swap."""
    check_writable(final, overwrite)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    try:
        os.rename(staging, final)
    except OSError:
        if old is not None:
            os.rename(old, final)  # put the previous adapter back: nothing finished is ever lost
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def plot_losses(history: list[dict], path: Path, title: str) -> None:
    """loss.png: train loss per logging step and eval loss per evaluation, against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def shown_path(value):
    """A local absolute path as the card shows it: relative to the working folder when under it, else from `~`, else
    only its last part: the card travels with the adapter, the machine's folders do not."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path, home = Path(value), Path.home()
    for root, prefix in ((Path.cwd(), ""), (home, "~/")):
        try:
            return prefix + str(path.relative_to(root))
        except ValueError:
            continue
    return f"<{path.name}>"
