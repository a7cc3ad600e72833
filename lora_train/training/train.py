"""`lora-train`: config -> data -> 4-bit base + LoRA -> TRL SFTTrainer -> adapter folder.

    lora-train                                   # the embedded default: tiny GPT-J, bundled sample, CPU
    lora-train experiment=gpt4all_j_lora_6b      # the GPT4All-J LoRA 6B recipe on GPT-J-6B
    lora-train dry_run=true                      # print the plan, load nothing heavy
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lora_train import artifacts, console
from lora_train.adapters import BASE_FILE, LATEST, base_summary
from lora_train.config import typed
from lora_train.data.build import build_datasets, check_source, is_local, read_rows, resolve_source
from lora_train.errors import UserError, reported
from lora_train.model import compute_dtype, load_base, load_tokenizer, peft_config, random_model_note, resolve_model
from lora_train.model import device_map as model_device_map
from lora_train.schemas import DType, TrainJob
from lora_train.training import card, checkpoints, distributed, plan, sweep
from lora_train.training import init as lora_init
from lora_train.training.estimate import resolve_checkpointing
from lora_train.training import metrics as run_log
from lora_train.training.metrics import run_metrics
from lora_train.training.packing import collator_for, layout_name


def to_job(cfg: DictConfig | TrainJob) -> TrainJob:
    return typed(cfg, TrainJob)


def check_job(job: TrainJob) -> None:
    """Everything that can be checked before loading anything: names, numbers, paths."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*", job.run_name):
        raise UserError(f"run_name={job.run_name!r}: use letters, digits and . _ - + = , (it names a folder)")
    if job.run_name == LATEST:
        raise UserError(f"run_name={LATEST}: {LATEST!r} is reserved (adapter=latest means the newest adapter in "
                        "adapters_dir); choose another run_name")
    t, d, lo = job.train, job.data, job.lora
    for key, value, ok in [
        ("lora.r", lo.r, lo.r > 0), ("lora.alpha", lo.alpha, lo.alpha > 0),
        ("lora.dropout", lo.dropout, 0 <= lo.dropout < 1), ("lora.target_modules", lo.target_modules, bool(lo.target_modules)),
        ("data.val_fraction", d.val_fraction, 0 <= d.val_fraction < 1), ("data.max_length", d.max_length, d.max_length > 1),
        ("data.max_prompt_fraction", d.max_prompt_fraction, 0 < d.max_prompt_fraction < 1),
        ("train.learning_rate", t.learning_rate, 0 < t.learning_rate < math.inf),
        ("train.per_device_batch_size", t.per_device_batch_size, t.per_device_batch_size > 0),
        ("train.epochs", t.epochs, (0 < t.epochs < math.inf) or (t.max_steps > 0 and math.isfinite(t.epochs))),
        ("train.warmup_steps", t.warmup_steps, t.warmup_steps >= 0),
        ("train.global_batch_size", t.global_batch_size, t.global_batch_size is None or t.global_batch_size > 0),
        ("train.save_steps", t.save_steps, t.save_steps is None or t.save_steps > 0),
        ("train.eval_steps", t.eval_steps, t.eval_steps is None or t.eval_steps > 0),
        ("train.logging_steps", t.logging_steps, t.logging_steps > 0),
        ("train.max_nonfinite_steps", t.max_nonfinite_steps, t.max_nonfinite_steps >= 0),
    ]:
        if not ok:
            raise UserError(f"{key}={value!r} is out of range")
    if not (isinstance(t.gradient_checkpointing, bool) or t.gradient_checkpointing == "auto"):
        raise UserError(f"train.gradient_checkpointing={t.gradient_checkpointing!r}: use true, false or auto")
    plan.check_optimizer(job)  # train.optim, train.lr_scheduler: names transformers accepts
    from lora_train.model import shards_weights

    lora_init.check(lo, job.quant, t.loraplus_lr_ratio, shards_weights())  # lora.init, use_dora, LoRA+


def mixed_precision(job: TrainJob) -> dict:
    """bf16/fp16 autocast per the effective compute dtype; the LoRA weights themselves stay float32 (see run())."""
    dt = compute_dtype(job.quant)
    return {"bf16": dt == DType.bfloat16, "fp16": dt == DType.float16}


def _checkpointing(on: bool) -> dict:
    """transformers renamed gradient_checkpointing to activation_checkpointing; use whichever this version has
    (tests/test_dependencies.py fails when neither field exists)."""
    import dataclasses

    from trl import SFTConfig

    if "activation_checkpointing" in {f.name for f in dataclasses.fields(SFTConfig)}:
        return {"activation_checkpointing": on, "gradient_checkpointing": None}
    return {"gradient_checkpointing": on}


def sft_config(job: TrainJob, work_dir: Path, accumulation: int, has_eval: bool, bars: bool = False):
    import torch
    from trl import SFTConfig

    t = job.train
    eval_strategy = ("steps" if t.eval_steps else "epoch") if has_eval else "no"
    args = dict(
        output_dir=str(work_dir),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=accumulation,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        **_checkpointing(t.gradient_checkpointing),
        optim=t.optim,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        disable_tqdm=not bars,  # progress=... / a terminal (lora_train/console.py); records print either way
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=None,  # lora_train.training.guards prunes, only after the newer checkpoint is marked complete
        report_to=list(t.report_to) or "none",
        seed=job.seed,
        data_seed=job.seed,
        use_cpu=not torch.cuda.is_available(),
        max_length=job.data.max_length,
        packing=False,
        # The data module already tokenized, masked and truncated every example (prompt capped at half the length).
        dataset_kwargs={"skip_prepare_dataset": True},
        # Packed batches have no padding to save: random order, as the recipe intends.
        train_sampling_strategy="group_by_length" if t.group_by_length and not t.packing else "random",
        **mixed_precision(job),
    )
    overlap = set(args) & set(t.sft_args)
    if overlap:
        raise UserError(f"train.sft_args sets {sorted(overlap)}, which lora-train already maps; use the train.* keys")
    try:
        return SFTConfig(**args, **t.sft_args)
    except (TypeError, ValueError) as e:
        raise UserError(f"train.sft_args / train.* rejected by trl.SFTConfig: {e}") from e


def check_eos_trained(collator, dataset, eos_id: int) -> None:
    """Pre-flight: run the real collator on real examples and make sure every example's final EOS keeps its label.

    The original GPT4All-J code used pad == EOS with a collator that masked pad tokens, so the model never learned
    to stop. Whatever the tokenizer or collator, this catches it before any step is spent.
    """
    with_eos = [i for i in range(min(len(dataset), 64)) if dataset[i]["labels"][-1] == eos_id]
    if not with_eos:
        return  # every example was cut before its EOS: data.py already counted that as truncation
    picked = sorted(with_eos, key=lambda i: len(dataset[i]["input_ids"]))
    picked = [picked[0], picked[-1]] if len(picked) > 1 else picked  # shortest and longest: forces padding
    examples = [dataset[i] for i in picked]
    batch = collator(examples)
    # A packing collator lays several examples out in one row; it says where each example's last token went.
    where = collator.positions(examples) if hasattr(collator, "positions") else \
        [(row, len(ex["input_ids"]) - 1) for row, ex in enumerate(examples)]
    for row, last in where:
        if int(batch["labels"][row, last]) != eos_id:
            raise UserError(
                "pre-flight check failed: the data collator masks the EOS label (the model would never learn to "
                "stop). This happens when pad == EOS and padding is masked by token id; give the tokenizer a "
                "distinct pad token or use a collator that masks by position."
            )


def run(cfg: DictConfig | TrainJob) -> Path | None:
    """Train one adapter; returns its folder (None for dry_run). Raises UserError for anything the user can fix."""
    job = to_job(cfg)
    check_job(job)
    console.quiet()  # again at run time: a caller's warnings.catch_warnings() may have dropped the import-time filter
    bars = console.wants_progress(job.progress)
    console.progress_bars(False)  # nothing before the plan: the model build, data cache and load stay silent
    job = distributed.setup(job)  # several processes: one run_name, one process group, launcher checked
    final = Path(job.adapters_dir) / job.run_name
    distributed.rank_zero_check(artifacts.check_writable, final, job.overwrite)
    check_source(job.data)
    model_path = resolve_model(job.model)
    job, checkpointing = resolve_checkpointing(job, model_path)  # auto -> on/off from the estimate and free memory
    world = plan.world_size()
    accumulation = plan.grad_accumulation(job, world)
    p = plan.Plan(world=world, accumulation=accumulation,
                  global_batch=job.train.per_device_batch_size * world * accumulation, checkpointing=checkpointing)
    if job.dry_run:
        p.layout = layout_name(None, job)
        return _dry_run(job, p, model_path)
    resume_from = checkpoints.prepare(job)  # None, or the complete checkpoint to continue

    from transformers import set_seed
    from trl import SFTTrainer

    from lora_train.training import guards  # imports transformers: only once there is training to do

    set_seed(job.seed)
    started = time.time()
    tokenizer = load_tokenizer(model_path, job.model)
    train_ds, eval_ds, report = build_datasets(job.data, tokenizer, job.seed)
    p.train_rows, p.data_cache = len(train_ds), report.cache
    p.optimizer_steps = plan.optimizer_steps(job, len(train_ds), p.global_batch)
    device_map = model_device_map()
    base = load_base(model_path, job.model, job.quant, device_map=device_map)
    for module in base.modules():
        # bitsandbytes repacks 4-bit weights for its AVX512-BF16 inference kernel on the first no-grad forward (the
        # evaluation) and keeps using that kernel afterwards, whose in-place bias add breaks the next training step's
        # autograd ("a view of a leaf Variable ... in-place"). Training keeps the ordinary layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False

    work_dir = checkpoints.work_dir(job)
    guard = guards.Guard(job, work_dir)
    collator = collator_for(base, tokenizer, job.data.max_length) if job.train.packing else None
    p.layout = layout_name(collator, job)
    trainer = SFTTrainer(
        model=base,
        args=sft_config(job, work_dir, accumulation, eval_ds is not None, bars),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        peft_config=peft_config(job.lora),
        callbacks=[guard],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for printer in (PrinterCallback, ProgressCallback):  # they print records as dicts of strings
        trainer.remove_callback(printer)
    trainer.add_callback(run_log.log_printer(bars))
    if bars:
        trainer.add_callback(run_log.quiet_progress())
    # TRL stores a quantized model's LoRA weights in bf16. At the recipe's lr of 2e-5, an Adam update is smaller
    # than bf16's resolution of typical LoRA-A values, so updates would round away: keep float32 master weights
    # (the forward pass still runs in bf16 under autocast).
    for param in trainer.model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    # LoftQ / PiSSA / OLoRA (None for PEFT's own inits); the optimizer does not exist yet, so it sees the new values.
    initial = lora_init.initialise(trainer.model, job.lora, model_path, job.model.revision)
    if job.train.loraplus_lr_ratio is not None:
        trainer.optimizer = lora_init.loraplus_optimizer(trainer, job.train.loraplus_lr_ratio)
    check_eos_trained(trainer.data_collator, train_ds, tokenizer.eos_token_id)
    p.trainable_params, p.base_params = (lambda t, a: (t, a - t))(*trainer.model.get_nb_trainable_parameters())
    if trainer.is_world_process_zero():
        print("\n".join(p.lines(job)), flush=True)
    console.progress_bars(bars)

    with guard.watching():  # SIGTERM/SIGUSR1 -> checkpoint + exit 75; NaN steps; failed saves -> clear errors
        result = trainer.train(resume_from_checkpoint=resume_from)
    final_eval = trainer.evaluate() if eval_ds is not None else {}
    runtime = time.time() - started
    adapter_state = distributed.gathered_state(trainer)  # FSDP / ZeRO-3: every rank holds a shard; gather them
    if not trainer.is_world_process_zero():
        return final
    metrics = run_metrics(job, trainer, result, final_eval, report, train_ds, p, runtime)
    staging = artifacts.staging_dir(final)
    try:
        trainer.model.save_pretrained(staging, state_dict=adapter_state)
        if initial is not None and initial.converts:  # trained on a residual base: saved for the original base
            lora_init.convert(staging, initial)
        tokenizer.save_pretrained(staging)
        (staging / "lora_train.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(job)))
        artifacts.write_json(staging / BASE_FILE, {**base_summary(base.config), "name_or_path": job.model.name_or_path,
                                                   "revision": job.model.revision})
        artifacts.write_json(staging / "metrics.json", metrics)
        artifacts.plot_losses(metrics["history"], staging / "loss.png", job.run_name)
        (staging / "README.md").write_text(card.render(job.run_name, metrics["config"], metrics))
        tb = next(work_dir.glob("runs"), None)
        if tb is not None:
            shutil.copytree(tb, staging / "tensorboard")
        artifacts.publish(staging, final, job.overwrite)
    except OSError as e:  # disk full, no permission: the previous adapter and the checkpoints stay as they were
        raise guards.publish_failed(final, work_dir, job, e) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    print(f"adapter written to {final}  (train loss {metrics['train_loss']:.4f} over the last logged steps"
          + (f", eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "") + ")", flush=True)
    note = random_model_note(job.model.name_or_path)
    if note:
        print(note, flush=True)
    return final


def _dry_run(job: TrainJob, p: plan.Plan, model_path: str) -> None:
    try:
        p.base_params, p.trainable_params = plan.count_parameters(model_path, job)
    except (OSError, ValueError, KeyError, AttributeError, UserError) as e:  # e.g. a Hub config while offline
        print(f"(parameter counts unavailable: {str(e).splitlines()[0]})", file=sys.stderr)
    rows = None
    if is_local(resolve_source(job.data.source)):  # counting a Hub dataset would mean downloading it
        rows, _ = read_rows(job.data)
    if rows is not None:
        p.train_rows = len(rows) - int(round(len(rows) * job.data.val_fraction))
        p.optimizer_steps = plan.optimizer_steps(job, p.train_rows, p.global_batch)
    print("dry run: nothing will be trained\n" + "\n".join(p.lines(job)), flush=True)
    try:  # the memory / FLOPs estimate (lora_train/training/estimate.py): arithmetic on the config, nothing loaded
        from lora_train.training.estimate import estimate_for

        print("\n".join(estimate_for(model_path, job).lines()), flush=True)
    except (OSError, ValueError, KeyError, AttributeError, UserError) as e:  # e.g. a Hub config while offline
        print(f"(estimate unavailable: {str(e).splitlines()[0]})", file=sys.stderr)
    return None


@hydra.main(config_path="pkg://lora_train.conf", config_name="train", version_base="1.3")
@reported
def main(cfg: DictConfig) -> float | None:
    # Under -m each job gets its own run_name, and returns its eval loss for sweepers such as Optuna to minimise; a
    # job failing with a user error is recorded as failed and the sweep goes on (lora_train/training/sweep.py).
    return sweep.run_job(run, cfg)


if __name__ == "__main__":
    main()
