"""The bridge to EleutherAI's lm-evaluation-harness: find the tasks, run them on a loaded model, pick the metric
the model card reports for each.

The GPT4All-J card's numbers are lm-eval's `acc_norm` (accuracy with each choice's log-likelihood normalised by
its length in bytes) wherever the task defines it, and `acc` where it does not. Checked against GPT-J 6B's row of
the card: HellaSwag 66.2 is acc_norm (acc is ~49.5), ARC-e 62.2 is acc_norm (acc is ~67.0), ARC-c 36.6 and
OBQA 38.2 are acc_norm; BoolQ and WinoGrande only have acc. PIQA's two are within a point of each other; acc_norm
by the same rule. Any other task follows the same rule unless `eval.metrics.<task>=<metric>` says otherwise.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from lora_train.errors import UserError, install_hint

CARD_METRIC = {
    "boolq": "acc", "piqa": "acc_norm", "hellaswag": "acc_norm", "winogrande": "acc",
    "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm",
}
CARD_LABEL = {
    "boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaSwag", "winogrande": "WinoGrande",
    "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA",
}
PERCENT = ("acc", "acc_norm", "exact_match", "f1", "mc1", "mc2", "mcc")  # shares in [0, 1], shown x100


def require_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise UserError(f"eval.tasks needs EleutherAI's lm-evaluation-harness, which is not installed: {install_hint('eval')}; "
                        "or pass eval.tasks=[] to measure only loss and samples") from e
    return lm_eval


def task_manager(tasks: list[str], include_path: str | None):
    """An lm-eval TaskManager that knows every task in `tasks`, or a UserError naming the unknown ones.

    Indexing lm-eval's own ~15k task YAMLs takes a minute on a small CPU, so when every task is found in
    `include_path` alone, lm-eval's own tasks are not indexed.
    """
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        folder = Path(include_path).expanduser()
        if not folder.is_dir():
            raise UserError(f"eval.include_path={include_path!r}: no such folder (it should hold task YAML files)")
        own = TaskManager(include_path=str(folder.resolve()), include_defaults=False)
        if all(t in own.all_tasks for t in tasks):
            return own
    tm = TaskManager(include_path=str(Path(include_path).expanduser().resolve()) if include_path else None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        hints = []
        for t in unknown:
            close = difflib.get_close_matches(t, tm.all_tasks, n=3)
            hints.append(f"{t!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        where = f" or in eval.include_path={include_path!r}" if include_path else ""
        raise UserError(f"eval.tasks: unknown lm-eval task {'; '.join(hints)}: not among lm-eval's tasks{where}. "
                        "List them with `lm-eval ls tasks`; for a task of your own, put its YAML in a folder and pass "
                        "eval.include_path=<folder>")
    return tm


def wrap(model, tokenizer, batch_size: int):
    """lm-eval's HFLM around an already-loaded model (a PeftModel whose active adapter is switched by the caller)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def evaluate(lm, tasks: list[str], tm, cfg, seed: int) -> dict:
    """Run the tasks on `lm`; the JSON-safe part of lm-eval's results (no per-sample logs)."""
    from lm_eval import simple_evaluate

    try:
        out = simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=tm, limit=cfg.limit, num_fewshot=cfg.num_fewshot,
            bootstrap_iters=cfg.bootstrap_iters, log_samples=False, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
    except (FileNotFoundError, ConnectionError) as e:
        raise UserError(f"eval.tasks: a task's data could not be loaded ({e}). Offline, lm-eval needs the datasets in "
                        "the local Hugging Face cache, or task YAMLs that read local files (eval.include_path)") from e
    keep = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better", "n-samples")
    return {k: out[k] for k in keep if k in out}


def metrics_of(task_results: dict) -> dict[str, dict[str, float | None]]:
    """{"acc,none": 0.5, "acc_stderr,none": 0.1, ...} -> {"acc": {"value": 0.5, "stderr": 0.1}}."""
    out: dict[str, dict] = {}
    for key, value in task_results.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        stderr = task_results.get(f"{metric}_stderr,{filt}")
        out[name] = {"value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    return out


def columns(requested: list[str], out: dict) -> list[str]:
    """The table's task columns: each requested task or group lm-eval reported on, then (for a tag, which lm-eval
    expands to its tasks) the reported tasks that are neither requested nor inside a requested group."""
    results, groups = out.get("results", {}), out.get("group_subtasks", {})
    inside = {s for g in requested for s in groups.get(g, [])}
    cols = [t for t in requested if t in results]
    return cols + [t for t in results if t not in cols and t not in inside and t not in groups]


def table_metric(task: str, available: dict, overrides: dict[str, str]) -> str | None:
    """The metric shown for `task`: eval.metrics, else the card's, else acc_norm, acc, or the first one."""
    for want in (overrides.get(task), CARD_METRIC.get(task), "acc_norm", "acc"):
        if want and want in available:
            return want
    if overrides.get(task):
        raise UserError(f"eval.metrics.{task}={overrides[task]!r}: lm-eval reported {sorted(available)} for {task}")
    return next(iter(available), None)


def label(task: str) -> str:
    return CARD_LABEL.get(task, task)


def shown(metric: str, value: float) -> float:
    """The number in the table: percentages for shares (as the card prints them), other metrics as they are."""
    return round(100 * value, 1) if metric.split(",")[0] in PERCENT else round(value, 4)
