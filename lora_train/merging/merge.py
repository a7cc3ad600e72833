"""`lora-merge`: an adapter merged into a full model that plain transformers loads, verified against the adapter.

    lora-merge adapter=adapters/my-run output=merged/my-run            # base read from the adapter folder
    lora-merge adapter=latest output=merged/latest                     # the newest adapter in adapters_dir
    lora-merge adapter=adapters/my-run output=merged/my-run merge.base=original dtype=bfloat16
    lora-merge adapters=[adapters/a,adapters/b] combination=cat output=adapters/a_plus_b   (see combine.py)

The merge itself is in full_model.py; combining adapters in combine.py.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lora_train import console
from lora_train.adapters import resolve_latest
from lora_train.config import typed
from lora_train.errors import UserError, reported
from lora_train.merging.combine import combine
from lora_train.merging.full_model import merge_into_model
from lora_train.schemas.merge import MergeJob


def to_job(cfg: DictConfig | MergeJob) -> MergeJob:
    return typed(cfg, MergeJob)


def run(cfg: DictConfig | MergeJob) -> Path:
    """Merge (`adapter=`) or combine (`adapters=`); returns the folder written. Raises UserError for user mistakes."""
    job = to_job(cfg)
    console.quiet()  # the import-time filters, again: a caller's warnings.catch_warnings() may have dropped them
    console.progress_bars(console.wants_progress(job.progress))
    if job.adapter is not None:
        job.adapter = resolve_latest(job.adapter, job.adapters_dir, "adapter")
    job.adapters = [resolve_latest(a, job.adapters_dir, "adapters") for a in job.adapters]
    if job.adapters:
        if job.adapter:
            raise UserError("give either adapter=... (merge into a full model) or adapters=[...] (combine), not both")
        return combine(job)
    if not job.adapter:
        raise UserError("adapter=...: which adapter folder to merge? (or adapters=[a,b] to combine adapters)")
    for key in ("weights", "density", "svd_rank"):
        if getattr(job, key) not in (None, []):
            raise UserError(f"{key}= only applies when combining adapters (adapters=[...]), not to adapter=...")
    return merge_into_model(job)


@hydra.main(config_path="pkg://lora_train.conf", config_name="merge", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
