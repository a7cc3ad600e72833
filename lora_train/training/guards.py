"""Guards around `trainer.train()`: preemption signals, non-finite steps, checkpoint bookkeeping, exact data order.

    guard = Guard(job, work_dir)                     # a transformers TrainerCallback
    trainer = SFTTrainer(..., callbacks=[guard])
    with guard.watching():                           # signal handlers; turns a stop into a clear exit
        trainer.train(resume_from_checkpoint=...)

- SIGTERM / SIGUSR1 (Slurm sends one before the time limit): the step in progress finishes, a checkpoint is saved,
  and the run exits with status PREEMPTED_EXIT and the command that resumes it. (transformers' own
  `enable_jit_checkpoint` saves in the middle of a step after a fixed wait and only on SIGTERM; resuming from such a
  checkpoint does not replay the same random numbers, so it is not used.)
- A step whose gradients hold NaN or inf is not applied (its gradients are dropped before the optimizer step);
  after more than `train.max_nonfinite_steps` such steps training stops, naming the steps and the last good
  checkpoint, and publishes nothing.
- Each checkpoint the Trainer writes is marked complete, then older ones are pruned (lora_train.training.checkpoints).
- The length-grouped sampler draws its order from its own generator seeded by (seed, epoch), not from the global
  random state, so a resumed run sees the same batches in every epoch as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path

from omegaconf import OmegaConf
from transformers import TrainerCallback

from lora_train.errors import Stopped, UserError
from lora_train.training import checkpoints

PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h): "temporary failure, retry" -- the run can be resumed
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


def resume_command(job) -> str:
    """The command line that resumes this run: the same overrides, plus resume=true and the exact run_name."""
    overrides = ["<the same overrides>"]  # called from Python: the caller's compose() overrides
    from hydra.core.hydra_config import HydraConfig  # a core dependency: nothing to guard against

    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "run_name", "overwrite")]
    quoted = [o if o.startswith("<") else shlex.quote(o) for o in keep]
    return " ".join(["lora-train", *quoted, "resume=true", shlex.quote(f"run_name={job.run_name}")])


def publish_failed(final: Path, work: Path, job, error: OSError) -> UserError:
    """The error for an adapter folder that could not be written: what is intact and how to finish the run."""
    last = checkpoints.latest(Path(work))
    kept = f"{final} is unchanged" if Path(final).exists() else f"nothing was written to {final}"
    return UserError(f"{final}: could not write the adapter ({error}); {kept}. Free disk space or fix the folder's "
                     "permissions, then " + (f"finish from the last checkpoint with: {resume_command(job)}" if last
                                             else "run again (set train.save_steps to keep checkpoints)"))


def _sampler_of(dataloader):
    """The sampler that orders training examples, through the wrappers accelerate puts around it."""
    for obj in (getattr(dataloader, "batch_sampler", None), getattr(dataloader, "sampler", None)):
        while obj is not None:
            if hasattr(obj, "generator") and hasattr(obj, "lengths"):
                return obj
            obj = getattr(obj, "sampler", None) or getattr(obj, "batch_sampler", None)
    return None


class Guard(TrainerCallback):
    def __init__(self, job, work_dir: Path):
        self.job = job
        self.work = Path(work_dir)
        self.max_nonfinite = job.train.max_nonfinite_steps
        self.keep = job.train.save_total_limit
        self.config_yaml = OmegaConf.to_yaml(OmegaConf.structured(job))
        self.signal_received: int | None = None
        self.preempted_at: int | None = None
        self.nonfinite_steps: list[int] = []
        self.nonfinite_stop = False
        self.saving_step: int | None = None
        self._generator = None

    # --- signals -----------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.signal_received is None:
            self.signal_received = signum
            print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after the current step",
                  file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def watching(self):
        """Install the signal handlers around training; afterwards turn a stop or a failed save into a clear exit."""
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set from there
            previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        try:
            yield self
        except (OSError, RuntimeError) as e:
            if self.saving_step is None:
                raise
            last = checkpoints.latest(self.work)
            raise UserError(
                f"{self.work}: writing checkpoint-{self.saving_step} failed ({e}); "
                + (f"the last complete checkpoint, {last}, is intact. " if last else "no complete checkpoint exists. ")
                + "Free disk space or fix the folder's permissions, then "
                + (f"resume with: {resume_command(self.job)}" if last else "run again")
            ) from e
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        last = checkpoints.latest(self.work)
        if self.nonfinite_stop:
            steps = ", ".join(map(str, self.nonfinite_steps))
            raise UserError(
                f"training stopped at optimizer step {self.nonfinite_steps[-1]}: non-finite (NaN or inf) loss or "
                f"gradients at step(s) {steps}, more than train.max_nonfinite_steps={self.max_nonfinite} "
                f"(those updates were not applied). Nothing was published; "
                + (f"the last good checkpoint is {last}. " if last
                   else "there is no checkpoint (set train.save_steps). ")
                + "Lower train.learning_rate or check the data"
                + (f", then resume with: {resume_command(self.job)}" if last else "")
            )
        if self.preempted_at is not None:
            name = signal.Signals(self.signal_received).name
            raise Stopped(
                f"{name}: training stopped at step {self.preempted_at} and saved {last}.\n"
                f"resume with: {resume_command(self.job)}",
                exit_code=PREEMPTED_EXIT,
            )

    # --- callback events ---------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        import torch

        sampler = _sampler_of(train_dataloader)
        if sampler is not None and sampler.generator is None:
            self._generator = sampler.generator = torch.Generator()
        if state.is_world_process_zero:
            when = f"every {args.save_steps} steps and " if args.save_strategy != "no" else ""
            print(f"checkpoints {when}on SIGTERM/SIGUSR1 in {self.work}; if interrupted, resume with: "
                  f"{resume_command(self.job)}", flush=True)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self._generator is not None:
            seed = args.data_seed if args.data_seed is not None else args.seed
            self._generator.manual_seed(seed * 1000 + int(state.epoch or 0))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return
        finite = torch.stack([torch.isfinite(p.grad).all() for p in params]).all()
        if bool(finite):
            return
        for p in params:
            p.grad = None  # the optimizer skips parameters without a gradient: this update is not applied
        step = state.global_step + 1
        self.nonfinite_steps.append(step)
        print(f"\nstep {step}: non-finite loss or gradients; update skipped "
              f"({len(self.nonfinite_steps)} so far, train.max_nonfinite_steps={self.max_nonfinite})",
              file=sys.stderr, flush=True)
        if len(self.nonfinite_steps) > self.max_nonfinite:
            self.nonfinite_stop = True
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.nonfinite_stop:
            control.should_save = False  # keep the last good checkpoint as the newest one
            control.should_evaluate = False
            return
        if self._signal_everywhere(args):
            self.preempted_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        self.saving_step = state.global_step if control.should_save else None

    def on_save(self, args, state, control, **kwargs):
        self._barrier(args)
        ckpt = self.work / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            checkpoints.mark_complete(ckpt, self.config_yaml)
            checkpoints.prune(self.work, self.keep)
        self._barrier(args)
        self.saving_step = None

    # --- several processes ------------------------------------------------------------------------------------
    def _signal_everywhere(self, args) -> bool:
        """Whether any process got a signal: all of them must stop at the same step."""
        import torch
        import torch.distributed as dist

        got = self.signal_received is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([1 if got else 0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag.item()) and not got:
                self.signal_received = signal.SIGTERM
            return bool(flag.item())
        return got

    @staticmethod
    def _barrier(args) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
