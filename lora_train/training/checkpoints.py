"""Checkpoints: what the transformers Trainer writes every `train.save_steps` (adapter, optimizer, scheduler, RNG
states, trainer state with the step reached), made safe to resume from.

    adapters/.<run_name>.work/checkpoint-<step>/   one checkpoint; lora_train_complete.json inside is written last

A checkpoint counts only once its marker exists and every file it lists has the recorded size: a checkpoint that was
being written when the process died is never picked. Older checkpoints are pruned only after the newer one is
marked, so there is always at least one complete checkpoint on disk once the first one is done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

from omegaconf import OmegaConf

from lora_train.errors import UserError

MARKER = "lora_train_complete.json"  # written (atomically) after every other file of a checkpoint is on disk
CONFIG = "lora_train.yaml"  # the resolved config of the run that wrote the checkpoint
_NAME = re.compile(r"checkpoint-(\d+)")
# Test hook: LORA_TRAIN_TEST_KILL_AT=<point> makes this process SIGKILL itself at that point of a checkpoint's write
# (no `finally` or atexit runs, as when the OOM killer or a power cut strikes), so a test can land a kill at a known
# moment instead of hoping a timed signal does. The points, in the order a save reaches them:
KILL_POINTS = ("checkpoint-config",  # the Trainer's files and lora_train.yaml are written; nothing is flushed yet
               "checkpoint-marker",  # everything is flushed and the marker's temp file written; not yet renamed
               "checkpoint-remove")  # pruning: an older checkpoint's marker is deleted, its files not yet
KILL_AT = "LORA_TRAIN_TEST_KILL_AT"
# Keys that may differ between a run and its resumption without changing what is trained (output, logging and
# memory/speed trade-offs: the same maths either way).
_FREE_KEYS = {"resume", "overwrite", "dry_run", "progress", "run_name", "adapters_dir", "train.report_to",
              "train.logging_steps", "train.eval_steps", "train.save_steps", "train.save_total_limit",
              "train.max_nonfinite_steps", "train.gradient_checkpointing", "data.cache"}


def work_dir(job) -> Path:
    """The hidden folder where a run keeps its checkpoints; removed after the adapter is published."""
    return Path(job.adapters_dir) / f".{job.run_name}.work"


def step_of(path: Path) -> int | None:
    m = _NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def _all(work: Path) -> list[Path]:
    if not work.is_dir():
        return []
    found = [p for p in work.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def is_complete(ckpt: Path) -> bool:
    """True when the marker exists and every file it lists is there with its recorded size."""
    try:
        files = json.loads((ckpt / MARKER).read_text())["files"]
        return all((ckpt / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def complete(work: Path) -> list[Path]:
    """Complete checkpoints of a work folder, oldest first."""
    return [p for p in _all(work) if is_complete(p)]


def latest(work: Path) -> Path | None:
    done = complete(work)
    return done[-1] if done else None


def _kill_point(point: str) -> None:
    if os.environ.get(KILL_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(ckpt: Path, config_yaml: str) -> None:
    """Write the run's config next to the checkpoint, flush everything to disk, then write the marker atomically."""
    (ckpt / CONFIG).write_text(config_yaml)
    _kill_point("checkpoint-config")
    files = {}
    for f in sorted(ckpt.rglob("*")):
        if f.is_file() and f.name != MARKER:
            _fsync(f)
            files[str(f.relative_to(ckpt))] = f.stat().st_size
    tmp = ckpt / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"step": step_of(ckpt), "files": files}, indent=1))
    _fsync(tmp)
    _kill_point("checkpoint-marker")
    os.replace(tmp, ckpt / MARKER)
    _fsync(ckpt)


def remove(ckpt: Path) -> None:
    """Delete a checkpoint: the marker goes first, so a deletion cut short leaves nothing that looks complete."""
    (ckpt / MARKER).unlink(missing_ok=True)
    _kill_point("checkpoint-remove")
    shutil.rmtree(ckpt, ignore_errors=True)


def prune(work: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (all when keep <= 0) and drop unfinished ones older than them."""
    done = complete(work)
    if keep > 0:
        for old in done[:-keep]:
            remove(old)
    newest = step_of(done[-1]) if done else None
    for p in _all(work):
        if newest is not None and step_of(p) < newest and not is_complete(p):
            remove(p)


def parse_resume(value) -> str | None:
    """`resume`: false -> None; true -> "latest"; auto -> "auto"; anything else is a checkpoint path."""
    text = str(value).strip()
    low = text.lower()
    if low in ("false", "no", "0", ""):
        return None
    if low in ("true", "yes", "1", "latest"):
        return "latest"
    if low == "auto":
        return "auto"
    return text


def reached_step(ckpt: Path) -> int | None:
    """The optimizer step a checkpoint holds: from its name (checkpoint-<n>), else from its completion marker (the
    step it was saved at), so a checkpoint that was copied or renamed resumes like the original."""
    step = step_of(ckpt)
    if step is None:
        try:
            step = json.loads((ckpt / MARKER).read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return step if isinstance(step, int) else None


def _config_diff(ckpt: Path, job) -> list[str]:
    path = ckpt / CONFIG
    if not path.is_file():
        return []
    saved = OmegaConf.to_container(OmegaConf.load(path), enum_to_str=True)
    now = OmegaConf.to_container(OmegaConf.structured(job), enum_to_str=True)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key != "train.sft_args":
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(saved), flat(now)
    return [f"{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k not in _FREE_KEYS and a.get(k) != b.get(k)]


def prepare(job) -> str | None:
    """Decide where training starts, before anything heavy loads. Returns the checkpoint to resume from, or None.

    - resume=false: a work folder holding checkpoints of an interrupted run is kept unless overwrite=true.
    - resume=true: the newest complete checkpoint of run_name (an error if there is none); auto: the same, or a fresh
      start when there is none (for schedulers that requeue the same command).
    - resume=<path>: that checkpoint, which must be complete.
    Unfinished checkpoints are deleted; checkpoints newer than the one resumed from are kept unless overwrite=true.
    """
    mode = parse_resume(job.resume)
    work = work_dir(job)
    existing = _all(work)
    if mode is None:
        if existing:
            if not job.overwrite:
                last = latest(work)
                hint = (f"resume it with resume=true run_name={job.run_name}" if last else "nothing there is complete")
                raise UserError(f"{work} holds checkpoints of an interrupted run ({hint}); "
                                f"pass overwrite=true to discard them and start again")
            shutil.rmtree(work, ignore_errors=True)
        return None
    if mode in ("latest", "auto"):
        ckpt = latest(work)
        if ckpt is None:
            if mode == "auto":
                for p in existing:
                    remove(p)
                return None
            raise UserError(f"resume=true: no complete checkpoint of run_name={job.run_name} in {work} "
                            f"(resuming needs the run_name of the interrupted run; train.save_steps makes checkpoints)")
    else:
        ckpt = Path(os.path.expanduser(mode))
        if not ckpt.is_dir():
            raise UserError(f"resume={mode!r}: no such checkpoint folder")
        if not is_complete(ckpt):
            raise UserError(f"resume={mode!r}: this checkpoint is incomplete (its writing was interrupted) "
                            f"or was not written by lora-train; pick a complete one" +
                            (f", e.g. {latest(ckpt.parent)}" if latest(ckpt.parent) else ""))
    step = reached_step(ckpt)
    if step is None:
        raise UserError(f"resume={mode!r}: cannot tell which step this checkpoint reached (its name is not "
                        f"checkpoint-<step> and its {MARKER} names no step); give the checkpoint folder itself")
    diff = _config_diff(ckpt, job)
    if diff:
        raise UserError(f"resume: {ckpt} was trained with a different config, so resuming would not continue the "
                        f"same run: {'; '.join(diff)}. Use the same values, or start a new run_name")
    newer = [p for p in existing if step_of(p) > step and p.resolve() != ckpt.resolve()]
    newer_complete = [p for p in newer if is_complete(p)]
    if newer_complete and not job.overwrite:
        raise UserError(f"resume={mode!r}: {work} has newer checkpoints ({', '.join(p.name for p in newer_complete)}) "
                        f"that resuming from {ckpt.name} would overwrite; pass overwrite=true to drop them")
    for p in existing:
        if p in newer or not is_complete(p):
            remove(p)
    return str(ckpt)
