"""`GET /v1/adapters/{name}`: an adapter's card as JSON facts, and `GET /v1/adapters/{name}/loss.png`: its plot.

The facts come from what lora-train and lora-eval left in the adapter folder: `adapter_config.json` (r, alpha,
targets), `lora_train.yaml` (base, data, curation), `metrics.json` (losses) and the evaluation section lora-eval
writes into `README.md`. The routes are read-only, take an adapter *name* (resolved by the registry with the same
containment rules as loading: nothing outside adapters_dir is reachable) and never answer with a local path: a data
source or base given as a path is shown by its file name only. A file that is missing, unreadable or malformed
leaves its facts out and is named in `problems`; it never fails the whole card.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lora_train.data.sources import is_local
from lora_train.errors import UserError
from lora_train.inference.registry import MultiAdapterModel

MAX_BYTES = 4 * 2**20  # a card file larger than this is not read (a card is small; this one is not ours)
MAX_TEXT = 500  # a string field longer than this is cut: the page shows facts, not documents
PLOT = "loss.png"
# The markers lora-eval puts around its section of README.md (lora_train/evaluation/report.py writes them).
EVAL_START, EVAL_END = "<!-- lora-eval:start -->", "<!-- lora-eval:end -->"


def public_name(source: str | None) -> str | None:
    """A Hub id or a builtin name as it is; a local path by its file or folder name only (no directories)."""
    if not isinstance(source, str) or not source:
        return None
    if source.startswith("builtin:") or not is_local(source):
        return _text(source)
    return _text(Path(source.rstrip("/\\")).name.split("\\")[-1] or "(local)")


def _text(v):
    if isinstance(v, str):
        return v if len(v) <= MAX_TEXT else v[:MAX_TEXT] + "..."
    if isinstance(v, bool) or v is None or isinstance(v, (int, float)):
        return v
    return _text(str(v))


def _read(folder: Path, name: str, problems: list[str]) -> str | None:
    """A file of the folder as text, or None (and a line in `problems`) when absent, too big or outside it."""
    path = folder / name
    if not path.is_file():
        return None
    if not path.resolve().is_relative_to(folder.resolve()):
        problems.append(f"{name} leads outside the adapter folder (symlink); not read")
        return None
    if path.stat().st_size > MAX_BYTES:
        problems.append(f"{name} is larger than {MAX_BYTES // 2**20} MiB; not read")
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{name} is unreadable ({type(e).__name__})")
        return None


def _mapping(folder: Path, name: str, problems: list[str]) -> dict:
    text = _read(folder, name, problems)
    if text is None:
        return {}
    try:
        data = json.loads(text) if name.endswith(".json") else OmegaConf.to_container(OmegaConf.create(text))
    except (ValueError, yaml.YAMLError, OmegaConfBaseException):  # json's ValueError, the YAML parser's, OmegaConf's
        problems.append(f"{name} is not valid {'JSON' if name.endswith('.json') else 'YAML'}; its facts are left out")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{name} does not hold a mapping; its facts are left out")
        return {}
    return data


def _get(d: dict, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _table_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [_text(c.strip().replace("\\|", "|")) for c in cells]


def eval_section(readme: str | None) -> dict | None:
    """lora-eval's section of README.md as {"notes": [lines], "tables": [{title, columns, rows}]}, or None."""
    if not readme or EVAL_START not in readme or EVAL_END not in readme.split(EVAL_START, 1)[1]:
        return None
    body = readme.split(EVAL_START, 1)[1].split(EVAL_END, 1)[0]
    notes, tables, title, current = [], [], "Evaluation", None
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("|"):
            if current is None:
                current = {"title": _text(title), "columns": _table_row(s), "rows": []}
                tables.append(current)
            elif not re.fullmatch(r"\|[\s:|-]+\|?", s):  # skip the | --- | separator
                current["rows"].append(_table_row(s))
            continue
        current = None
        if s.startswith("#"):
            title = s.lstrip("#").strip() or title
        elif s:
            notes.append(_text(s))
    return {"notes": notes, "tables": tables}


def card(host: MultiAdapterModel, name: str) -> dict:
    """The card of adapter `name` (UnknownAdapter / UserError for a name that is not a servable adapter)."""
    folder = host.folder_of(name)
    problems: list[str] = []
    peft = _mapping(folder, "adapter_config.json", problems)
    config = _mapping(folder, "lora_train.yaml", problems)
    metrics = _mapping(folder, "metrics.json", problems)
    data, report = config.get("data") or {}, metrics.get("data") or {}
    filters = data.get("filters") or report.get("filters") or []
    history = [h for h in metrics.get("history") or [] if isinstance(h, dict)]
    evals = [h["eval_loss"] for h in history if isinstance(h.get("eval_loss"), (int, float))]
    targets = peft.get("target_modules") or _get(config, "lora", "target_modules") or []
    plot = folder / PLOT
    has_plot = plot.is_file() and plot.resolve().is_relative_to(folder.resolve())
    return {
        "name": name,
        "resident": name in host.resident(),
        "base": public_name(_get(config, "model", "name_or_path") or peft.get("base_model_name_or_path")),
        "base_revision": _text(_get(config, "model", "revision") or peft.get("revision")),
        "quant": _text(_get(config, "quant", "mode")),
        "lora": {
            "r": _text(peft.get("r", _get(config, "lora", "r"))),
            "alpha": _text(peft.get("lora_alpha", _get(config, "lora", "alpha"))),
            "dropout": _text(peft.get("lora_dropout", _get(config, "lora", "dropout"))),
            "target_modules": [_text(t) for t in targets] if isinstance(targets, list) else [_text(targets)],
        },
        "data": {
            "source": public_name(data.get("source") or report.get("source")),
            "revision": _text(data.get("revision") or report.get("revision")),
            "curation": _text(data.get("curation") or report.get("curation")),
            "filters": [_text(f) for f in filters] if isinstance(filters, list) else [],
            "train_rows": _text(report.get("train_rows")),
            "val_rows": _text(report.get("val_rows")),
        },
        "training": {
            "steps": _text(metrics.get("global_step")),
            "learning_rate": _text(_get(config, "train", "learning_rate")),
            "train_loss": _text(metrics.get("train_loss")),
            "eval_loss": _text(metrics.get("eval_loss")),
            "eval_loss_first": _text(evals[0]) if evals else None,
            "eval_perplexity": _text(metrics.get("eval_perplexity")),
            "runtime_s": _text(metrics.get("runtime_s")),
        },
        "evaluation": eval_section(_read(folder, "README.md", problems)),
        "plot": f"/v1/adapters/{name}/{PLOT}" if has_plot else None,
        "problems": problems,
    }


def plot_bytes(host: MultiAdapterModel, name: str) -> bytes:
    """The adapter's loss.png (UserError when it has none)."""
    folder = host.folder_of(name)
    path = folder / PLOT
    if not path.is_file():
        raise UserError(f"adapter {name!r} has no {PLOT} (it was not trained by lora-train, or its run was cut short)")
    if not path.resolve().is_relative_to(folder.resolve()) or path.stat().st_size > MAX_BYTES:
        raise UserError(f"adapter {name!r}: {PLOT} leads outside its folder or is too large; refused")
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise UserError(f"adapter {name!r}: {PLOT} is not a PNG image")
    return data


def without_paths(message: str, host: MultiAdapterModel) -> str:
    """The registry's message with the adapters folder's location replaced by the key that sets it."""
    if host.adapters_dir is not None:
        for where in sorted({str(host.adapters_dir.resolve()), str(host.adapters_dir)}, key=len, reverse=True):
            message = message.replace(where, "adapters_dir")
    return message


def mount(app, host: MultiAdapterModel, authorize, api_error) -> None:
    """Add the two read-only routes; `authorize` is the server's key check, `api_error` maps an error to its reply."""
    from fastapi import Depends
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    async def guarded(fn, name: str):
        try:
            return await run_in_threadpool(fn, host, name)
        except UserError as e:  # same status as elsewhere, but the message names no folder of this machine
            raise api_error(type(e)(without_paths(str(e), host))) from None

    @app.get("/v1/adapters/{name}", dependencies=[Depends(authorize)])
    async def adapter_card(name: str):
        return await guarded(card, name)

    @app.get("/v1/adapters/{name}/" + PLOT, dependencies=[Depends(authorize)])
    async def adapter_plot(name: str):
        return Response(await guarded(plot_bytes, name), media_type="image/png",
                        headers={"cache-control": "no-store"})
