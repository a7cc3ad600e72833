"""Adapter folders: written in a hidden staging folder, then renamed into place, so a half-written adapter never
looks finished and an existing one is replaced only with `overwrite=true`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from lora_train.errors import UserError


def check_writable(final: Path, overwrite: bool) -> None:
    """Fail before any work when the target exists and may not be replaced."""
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; choose another run_name=... or pass overwrite=true to replace it")


def staging_dir(final: Path) -> Path:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    except OSError as e:
        raise UserError(f"{final.parent}: cannot create the adapter folder there ({e}); free disk space or fix "
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
