"""metrics.json of an adapter folder: losses, throughput, memory, the data report and the resolved config."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from omegaconf import OmegaConf


def run_metrics(job, trainer, result, final_eval, report, train_ds, p, runtime) -> dict:
    import resource

    import torch

    history = trainer.state.log_history
    steps = trainer.state.global_step
    # Tokens seen: the dataset's tokens times the fraction of an epoch the optimizer steps covered.
    epochs_done = steps * p.global_batch / max(1, len(train_ds))
    input_tokens = sum(len(x) for x in train_ds["input_ids"]) * epochs_done
    trained_tokens = sum(sum(1 for v in x if v != -100) for x in train_ds["labels"]) * epochs_done
    train_time = result.metrics.get("train_runtime", runtime)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    train_losses = [h["loss"] for h in history if "loss" in h]
    m = {
        "run_name": job.run_name,
        "train_loss": train_losses[-1] if train_losses else result.training_loss,
        "train_loss_mean": result.training_loss,
        "global_step": steps,
        "epochs": epochs_done,
        "runtime_s": round(runtime, 2),
        "train_runtime_s": round(train_time, 2),
        "input_tokens_per_s": round(input_tokens / train_time, 1),
        "trained_tokens_per_s": round(trained_tokens / train_time, 1),
        "peak_memory_mib": round(peak, 1),
        "peak_memory_kind": "cuda_allocated" if torch.cuda.is_available() else "process_rss",
        "world_size": p.world,
        "global_batch_size": p.global_batch,
        "trainable_params": p.trainable_params,
        "data": asdict(report),
        "history": history,
        "config": OmegaConf.to_container(OmegaConf.structured(job), enum_to_str=True),
    }
    if "eval_loss" in final_eval:
        m["eval_loss"] = final_eval["eval_loss"]
        m["eval_perplexity"] = math.exp(min(final_eval["eval_loss"], 50))
    return json.loads(json.dumps(m, default=str))
