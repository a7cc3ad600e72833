"""metrics.json of an adapter folder: losses, throughput, memory, the data report and the resolved config."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from omegaconf import OmegaConf

from lora_train.model import compute_dtype


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
        "train_loss_mean": result.training_loss,  # over the whole run; "train loss" is the last logged one
        "compute_dtype": compute_dtype(job.quant).value,  # what the matmuls ran in (config: what was asked for)
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


# The Trainer's records, printed as aligned columns: (log key, column title, format). "train loss" everywhere (this
# log, the last line, metrics.json's train_loss, the card) is the mean loss over the last logging interval, i.e. the
# last `loss` record; the mean over the whole run is kept in metrics.json as train_loss_mean and not printed.
COLUMNS = [("loss", "train loss", "{:.4f}"), ("eval_loss", "eval loss", "{:.4f}"), ("grad_norm", "grad norm", "{:.3f}"),
           ("learning_rate", "lr", "{:.2e}")]


def log_line(logs: dict, step: int, max_steps: int, epoch: float | None) -> str | None:
    """One aligned line for a train or eval record; None for the run's closing summary (train_runtime, ...)."""
    if "train_runtime" in logs or not any(key in logs for key, _, _ in COLUMNS):
        return None
    width = len(str(max_steps))
    parts = [f"step {step:>{width}}/{max_steps}", f"epoch {epoch if epoch is not None else 0:5.2f}"]
    for key, title, fmt in COLUMNS:  # every column keeps its place: a train and an eval record line up
        value = logs.get(key)
        cell = f"{title} {fmt.format(value):>9}" if isinstance(value, (int, float)) else ""
        parts.append(f"{cell:<{len(title) + 10}}")
    return "  ".join(parts).rstrip()


def log_printer(bars: bool):
    """A TrainerCallback printing each record as log_line; with bars, written above the progress bar."""
    from transformers import TrainerCallback

    class LogPrinter(TrainerCallback):
        last = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            line = log_line(logs or {}, state.global_step, state.max_steps, state.epoch)
            # The closing evaluation repeats the last scheduled one when they fall on the same step: printed once.
            if line is None or line == self.last or not state.is_world_process_zero:
                return
            self.last = line
            if bars:
                from tqdm.auto import tqdm

                tqdm.write(line)
            else:
                print(line, flush=True)

    return LogPrinter()


def quiet_progress():
    """The Trainer's progress bar without its own record printing (dicts of strings): LogPrinter prints those."""
    from transformers.trainer_callback import ProgressCallback

    class Bar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    return Bar()
