"""The model card (README.md) of an adapter folder: what it was trained from, how, and how well."""

from __future__ import annotations

from typing import Any

from lora_train.artifacts import shown_path

THIS_FOLDER = "<this folder>"  # the adapter folder, wherever it is copied: a card names no path of the machine


def example_format(template: str) -> str:
    """How a training example was written, per data.template (lora-generate and lora-serve use the same by default)."""
    if template == "gpt4all":
        return 'Each example is prompt + "\\n" + response + EOS'
    if template == "alpaca":
        return "Each example is in the Alpaca template (### Instruction: / ### Response:) + EOS"
    if template == "chat_template":
        return "Each example is rendered with the tokenizer's chat template"
    return f"Each example is written with the template `{template}`, then the response + EOS"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "-"
    return "-" if v is None else str(v)


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in rows]
    return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _step(s: dict) -> str:
    """'377 -> 374 (removed 3, e.g. file:101: prompt is one character)' for one curation step."""
    text = f"{s['rows_in']} -> {s['rows_out']} (removed {s['rows_in'] - s['rows_out']}"
    if s.get("step") == "dedup":
        text += f": {s.get('exact', 0)} exact, {s.get('near', 0)} near"
    if s.get("examples"):
        text += f"; e.g. {s['examples'][0]}"
    return text.replace("|", "\\|") + ")"


def variant(lora: dict, train: dict) -> str:
    """The LoRA variant in words, e.g. 'PiSSA initialisation, DoRA, rsLoRA scale'; 'plain LoRA' when none."""
    init = str(lora.get("init", "default")).split(".")[-1]  # an Enum or its value
    names = {"gaussian": "Gaussian", "loftq": "LoftQ", "pissa": "PiSSA", "olora": "OLoRA"}
    parts = []
    if init in names:
        iters = lora.get("loftq_iters", 1)
        parts.append(f"{names[init]} initialisation" + (f" ({iters} rounds)" if init == "loftq" else ""))
    parts += [what for key, what in (("use_dora", "DoRA"), ("use_rslora", "rsLoRA scale")) if lora.get(key)]
    if train.get("loraplus_lr_ratio"):
        parts.append(f"LoRA+ (B learning rate x{train['loraplus_lr_ratio']:g})")
    text = ", ".join(parts) or "plain LoRA"
    if init in ("pissa", "olora") or (init == "loftq" and lora.get("loftq_iters", 1) > 1):
        text += (". It was trained on a residual base (the 4-bit base changed by the initialisation) and saved "
                 "converted to a plain LoRA of twice the rank on the original base, exact against its full-precision "
                 "weights")
    return text


def use_snippet(base: str, revision: str | None) -> str:
    """Python that loads this adapter on its base, as written: a builtin base through lora-train's own loader (it is
    built locally, it is no Hub id), anything else through transformers."""
    if base.startswith("builtin:"):
        load = (f'from lora_train.model import resolve_model\nfrom lora_train.schemas import ModelConfig\n\n'
                f'# {base} is built locally by lora-train (no download) and cached\n'
                f'base = AutoModelForCausalLM.from_pretrained(resolve_model(ModelConfig(name_or_path="{base}")))')
    else:
        rev = f', revision="{revision}"' if revision else ""
        load = f'base = AutoModelForCausalLM.from_pretrained("{base}"{rev})'
    return f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

{load}
model = PeftModel.from_pretrained(base, "{THIS_FOLDER}")
tokenizer = AutoTokenizer.from_pretrained("{THIS_FOLDER}")
```"""


def render(run_name: str, config: dict, metrics: dict) -> str:
    """Markdown with a YAML header the Hub understands (library, base model, tags)."""
    model, data = config["model"], config["data"]
    base = shown_path(model["name_or_path"])
    report = metrics.get("data", {})
    steps = report.get("steps") or []
    curation = ", ".join(report.get("filters") or data.get("filters") or []) or "none"
    if data.get("curation"):
        curation = f"{data['curation']} ({curation})"
    evals = [h["eval_loss"] for h in metrics.get("history", []) if "eval_loss" in h]
    results = [
        ("train loss (the last logged: mean over the last logging interval)", metrics.get("train_loss")),
        ("eval loss (first -> last)", f"{evals[0]:.4f} -> {evals[-1]:.4f}" if evals else None),
        ("optimizer steps", metrics.get("global_step")),
        ("runtime (s)", metrics.get("runtime_s")),
        ("trained tokens/s", metrics.get("trained_tokens_per_s")),
        ("peak memory (MiB)", metrics.get("peak_memory_mib")),
    ]
    data_rows = [
        ("source", shown_path(data["source"])),
        ("revision", data.get("revision")),
        ("curation", curation),
        ("rows read", report.get("rows_read")),
        ("rows skipped (malformed)", report.get("rows_skipped")),
        ("prompts truncated", report.get("prompts_truncated")),
        ("responses truncated", report.get("responses_truncated")),
        ("dropped (no response tokens left)", report.get("dropped_no_response_tokens")),
        ("train / validation rows", f"{report.get('train_rows')} / {report.get('val_rows')}"),
    ]
    data_rows[4:4] = [(f"curation step {s['step']} (rows in -> out)", _step(s)) for s in steps]
    hyper = [(k, shown_path(v)) for k, v in _flatten(config)
             if k.split(".")[0] in {"quant", "lora", "train", "data", "model"}]
    asked, used = config["quant"].get("compute_dtype"), metrics.get("compute_dtype")
    if used is not None:  # one fact, two numbers otherwise: what was asked for and what the matmuls ran in
        hyper = [(k, f"{used} (asked {asked}; this hardware would only emulate it)" if k == "quant.compute_dtype"
                  and used != asked else v) for k, v in hyper]
    hyper.append(("seed", config.get("seed")))
    computed = f", computed in {metrics['compute_dtype']}" if metrics.get("compute_dtype") else ""
    return f"""---
library_name: peft
base_model: {base}
tags: [lora, qlora, gpt-j, gpt4all-j, lora-train]
---

# {run_name}

A LoRA adapter for `{base}`{f" (revision `{model['revision']}`)" if model.get("revision") else ""}, trained with
lora-train: {config['quant']['mode']} base{computed}, LoRA r={config['lora']['r']} alpha={config['lora']['alpha']} on
{", ".join(config['lora']['target_modules'])}. Variant: {variant(config['lora'], config.get('train', {}))}.
{example_format(data.get("template", "gpt4all"))}, with the loss on the response and its EOS.

## Use

{use_snippet(base, model.get("revision"))}

## Results

{_table(results)}

![loss](loss.png)

## Data

{_table(data_rows)}

## Hyperparameters

{_table(hyper)}
"""
