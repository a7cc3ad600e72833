"""`lora-eval`: the base and each adapter on the model card's common-sense tasks, loss and samples, one table.

    lora-eval adapters=[adapters/a,adapters/b]                         # the card's 7 tasks, base + 2 adapters
    lora-eval adapters=[adapters/a] eval.tasks=[arc_easy] eval.limit=50 # a quick look
    lora-eval model=gptj_6b eval.tasks=[hellaswag]                     # a base alone

The base loads once; every adapter is attached to it with PEFT and switched with set_adapter (disable_adapter for
the base row), so N adapters cost one base load. Writes results.md, results.json and samples.md to `output`, and
the table into each adapter's README.md.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lora_train import artifacts, console
from lora_train.adapters import check_against_config, check_against_model, read_adapter, resolve_latest
from lora_train.config import checked_overrides, typed
from lora_train.errors import UserError, reported
from lora_train.evaluation import harness, perplexity, samples
from lora_train.evaluation import report as eval_report
from lora_train.model import compute_dtype, load_base, load_tokenizer, resolve_model
from lora_train.schemas import DataConfig, QuantConfig, QuantMode
from lora_train.schemas.eval import EvalJob

LIBRARIES = ["lora-train", "lm-eval", "torch", "transformers", "peft", "datasets", "bitsandbytes", "accelerate"]


def to_job(cfg: DictConfig | EvalJob) -> EvalJob:
    return typed(cfg, EvalJob)


def choose_base(job: EvalJob, infos: list) -> tuple:
    """(ModelConfig, QuantConfig): model=/quant= when given, else what the adapters were trained with."""
    model_cfg, quant_cfg = job.model, job.quant
    trained = [i for i in infos if i.job is not None]
    if model_cfg is None:
        if not infos:
            raise UserError("nothing to evaluate: pass adapters=[<folder>,...] (the base is read from them) "
                            "and/or model=<group> (e.g. model=gptj_6b) for a base alone")
        if not trained:
            raise UserError(f"adapter {infos[0].name!r} has no lora_train.yaml, so its base is unknown: "
                            f"pass model=<group> model.name_or_path=<folder or Hub id> (its PEFT config names "
                            f"{infos[0].base_name_or_path!r})")
        bases = {(i.job.model.name_or_path, i.job.model.revision) for i in trained}
        if len(bases) > 1:
            listed = "; ".join(f"{i.name}: {i.job.model.name_or_path}" for i in trained)
            raise UserError(f"the adapters were trained on different bases ({listed}); one table compares adapters "
                            "of one base: evaluate each base's adapters in its own lora-eval run")
        model_cfg = trained[0].job.model
    if quant_cfg is None:
        quants = {i.job.quant.mode for i in trained}
        if len(quants) > 1:
            raise UserError(f"the adapters were trained on differently quantized bases ({sorted(q.value for q in quants)}); "
                            "pass quant=nf4 (or none, ...) to evaluate all of them on one")
        quant_cfg = trained[0].job.quant if trained else (QuantConfig() if not infos else QuantConfig(mode=QuantMode.none))
    return model_cfg, quant_cfg


def load_models(job: EvalJob, infos: list, model_cfg, quant_cfg):
    """The base loaded once with every adapter attached (PEFT adapter names a0, a1, ...), and its tokenizer."""
    import torch
    from transformers import AutoConfig

    path = resolve_model(model_cfg)
    label = f"base {model_cfg.name_or_path!r}"
    try:
        config = AutoConfig.from_pretrained(path, revision=model_cfg.revision,
                                            trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"model.name_or_path={model_cfg.name_or_path!r}: could not read its config: {e}") from e
    for info in infos:
        check_against_config(info, config, label)
    tokenizer = load_tokenizer(path, model_cfg)
    base = load_base(path, model_cfg, quant_cfg, device_map={"": 0} if torch.cuda.is_available() else None)
    for info in infos:
        check_against_model(info, base, label)
    model = base
    if infos:
        from peft import PeftModel

        for n, info in enumerate(infos):
            try:
                if n == 0:
                    model = PeftModel.from_pretrained(base, str(info.folder), adapter_name="a0")
                else:
                    model.load_adapter(str(info.folder), adapter_name=f"a{n}")
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                raise UserError(f"adapter {info.name!r}: PEFT could not load {info.folder}: {e}") from e
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def active(model, adapter: str | None):
    """The model answering as the base (adapter None) or as one adapter."""
    if adapter is None:
        with (model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()):
            yield model
    else:
        model.set_adapter(adapter)
        yield model


def versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def eval_sets(job: EvalJob, infos: list, tokenizer) -> dict[str, perplexity.EvalSet]:
    """The loss datasets: loss.source, else each adapter's validation split (one set per distinct split)."""
    if not job.loss.enabled and not (job.samples.count and not job.samples.prompts):
        return {}
    if job.loss.source:
        data_cfg = next((i.job.data for i in infos if i.job is not None), DataConfig())
        s = perplexity.file_set(job.loss.source, data_cfg, tokenizer, job.loss.max_rows)
        return {s.name: s}
    sets, seen = {}, {}
    for info in infos:
        if info.job is None:
            continue
        key = json.dumps([OmegaConf.to_container(OmegaConf.structured(info.job.data), enum_to_str=True),
                          info.job.seed], sort_keys=True)
        if key not in seen:
            s = perplexity.validation_set(info, tokenizer, job.loss.max_rows)
            seen[key] = s
            if s is not None:
                sets[s.name] = s
    return sets


def run(cfg: DictConfig | EvalJob) -> Path:
    """Evaluate; returns the output folder. Raises UserError for anything the user can fix."""
    job = to_job(cfg)
    console.quiet()  # the import-time filters, again: a caller's warnings.catch_warnings() may have dropped them
    console.progress_bars(console.wants_progress(job.progress))
    started = time.time()
    out = Path(job.output).expanduser()
    artifacts.check_output(out, "output", job.overwrite)  # before any adapter is read or model loaded
    infos = [read_adapter(resolve_latest(p, job.adapters_dir, "adapters"), job.allow_pickle) for p in job.adapters]
    folders = [i.folder.resolve() for i in infos]
    if len(set(folders)) < len(folders):
        raise UserError(f"adapters={job.adapters}: an adapter is listed twice")
    model_cfg, quant_cfg = choose_base(job, infos)
    tm = harness.task_manager(job.eval.tasks, job.eval.include_path) if job.eval.tasks else None
    if not job.base and not infos:
        raise UserError("base=false and no adapters=[...]: nothing to evaluate")

    model, tokenizer = load_models(job, infos, model_cfg, quant_cfg)
    names = [i.name if [j.name for j in infos].count(i.name) == 1 else str(i.folder) for i in infos]
    rows = ([eval_report.ModelResult(f"{model_cfg.name} (base)", None)] if job.base else []) + [
        eval_report.ModelResult(n, str(i.folder)) for n, i in zip(names, infos)]
    adapter_of = {r.name: (None if r.adapter is None else f"a{names.index(r.name)}") for r in rows}
    sets = eval_sets(job, infos, tokenizer)
    prompts = [samples.as_prompt(p) for p in job.samples.prompts] or (
        samples.prompts_from(next(iter(sets.values())).examples, tokenizer, job.samples.count) if sets else [])
    lm = harness.wrap(model, tokenizer, job.eval.batch_size) if tm is not None else None
    answers = {}
    for row in rows:
        with active(model, adapter_of[row.name]):
            print(f"evaluating {row.name}", flush=True)
            if lm is not None:
                row.harness = harness.evaluate(lm, job.eval.tasks, tm, job.eval, job.seed)
            if job.loss.enabled:
                row.loss = {name: perplexity.mean_loss(model, s, job.loss.batch_size, tokenizer.pad_token_id)
                            for name, s in sets.items()}
            answers[row.name] = [samples.complete(model, tokenizer, p, job.samples.max_new_tokens) for p in prompts]

    table = eval_report.score_table(rows, job.eval.tasks, job.eval.metrics)
    shots = "each task's default" if job.eval.num_fewshot is None else job.eval.num_fewshot
    limit = f"at most {job.eval.limit:g} examples per task" if job.eval.limit else "every example of each task"
    quant = quant_cfg.mode.value + (f", {compute_dtype(quant_cfg).value} compute" if quant_cfg.mode != QuantMode.none else "")
    ran = []  # the header names only what ran: no harness settings when eval.tasks=[] ran no harness
    if lm is not None:
        ran.append(f"lm-eval {versions()['lm-eval'] or '-'}, {shots} few-shot, {limit}")
    if job.loss.enabled and sets:
        ran.append("loss and perplexity on " + ", ".join(sets))
    if prompts:
        ran.append(f"{len(prompts)} greedy sample{'s' if len(prompts) != 1 else ''}")
    measured = "; ".join(ran) or "nothing measured"
    header = (f"Base `{artifacts.shown_path(model_cfg.name_or_path)}` ({quant}); {measured}; "
              f"seed {job.seed}. Evaluated {datetime.now(timezone.utc):%Y-%m-%d} with lora-eval.")
    scores = eval_report.scores_markdown(table, rows)
    losses = eval_report.loss_markdown(rows, {n: s.description for n, s in sets.items()}) if job.loss.enabled else ""
    # The whole folder appears at once, complete; an existing one is replaced only with overwrite=true.
    staging = artifacts.staging_dir(out)
    try:
        (staging / "results.md").write_text(eval_report.results_markdown(header, scores, losses))
        (staging / "results.json").write_text(json.dumps(_results_json(job, model_cfg, quant_cfg, rows, table,
                                                                        sets, started), indent=2) + "\n")
        if prompts:
            (staging / "samples.md").write_text(samples.render(
                prompts, answers, f"Greedy completions, at most {job.samples.max_new_tokens} new tokens."))
        artifacts.publish(staging, out, job.overwrite)
    except OSError as e:
        raise UserError(f"output={out}: could not write the results ({e})") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if job.update_cards:
        section = eval_report.card_section(header, scores, losses)
        for info in infos:
            eval_report.update_card(info.folder, section)
    print(eval_report.results_markdown(header, scores, losses), flush=True)
    print(f"results written to {out}" + (f"; model cards updated: {', '.join(names)}"
                                         if job.update_cards and infos else ""), flush=True)
    return out


def _results_json(job, model_cfg, quant_cfg, rows, table, sets, started) -> dict:
    as_dict = lambda x: OmegaConf.to_container(OmegaConf.structured(x), enum_to_str=True)  # noqa: E731
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": round(time.time() - started, 2),
        "seed": job.seed,
        "versions": versions(),
        "base": as_dict(model_cfg),
        "quant": {**as_dict(quant_cfg), "effective_compute_dtype": compute_dtype(quant_cfg).value},
        "config": as_dict(job),
        "table": {"columns": table.columns, "metrics": table.metrics},
        "loss_sets": {n: {"description": s.description, "rows": len(s.examples), "tokens": s.tokens}
                      for n, s in sets.items()},
        "models": [{
            "name": r.name, "adapter": r.adapter,
            "table": table.cells.get(r.name, {}), "average": table.average.get(r.name),
            "tasks": {t: harness.metrics_of(v) for t, v in (r.harness or {}).get("results", {}).items()},
            "lm_eval": {k: v for k, v in (r.harness or {}).items() if k != "results"},
            "loss": r.loss,
        } for r in rows],
    }


@checked_overrides("eval")  # quant.mode=... while quant is null: one line saying to write quant=...
@hydra.main(config_path="pkg://lora_train.conf", config_name="eval", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
