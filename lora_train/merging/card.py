"""Model cards (README.md) for what lora-merge writes: a merged full model, or a combined adapter."""

from __future__ import annotations

from lora_train.adapters import AdapterInfo
from lora_train.artifacts import shown_path


def _rows(pairs) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    return "\n".join(lines + [f"| {k} | {'-' if v is None else v} |" for k, v in pairs])


def render_merged(info: AdapterInfo, result: dict) -> str:
    from lora_train.merging.verify import table

    v = result.get("verification")
    if v is None:
        verification = "Not verified (`merge.verify=false`)."
    else:
        verification = table(v)
        if v["failed"]:
            verification += "\n\n**Verification failed; this model was written with `merge.force=true`.**"
    method = {
        "dequantized": f"LoRA delta (scale x B @ A) added to the {result['quant']}-rounded base weights the adapter "
                       "was trained against (dequantized with bitsandbytes)",
        "original": "LoRA delta (scale x B @ A) added to the base checkpoint's own weights",
    }[result["merge_base"]]
    return f"""---
library_name: transformers
base_model: {result['base']}
tags: [merged-lora, lora-train]
---

# {info.name} (merged)

A full model: the LoRA adapter `{info.name}` merged into `{result['base']}`. Load it with plain transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

## Merge

{_rows([
    ("adapter", f"`{shown_path(result['adapter'])}`"),
    ("base", f"`{shown_path(result['base'])}`" + (f" (revision `{result['revision']}`)" if result.get("revision") else "")),
    ("adapter trained on", f"{result['quant']} base"),
    ("merge method", method),
    ("merge base (`merge.base`)", result["merge_base"]),
    ("dtype", result["dtype"]),
    ("merged modules", result["merged_modules"]),
    ("weight files", ", ".join(result["shards"])),
])}

## Verification

The merged model against the adapter on its training-time base, on held-out examples:

{verification}
"""


def render_combined(name: str, combo: dict) -> str:
    parents = "\n".join(f"| `{shown_path(p['folder'])}` | {p['weight']} | {p['r']} | {p['alpha']} |" for p in combo["parents"])
    return f"""---
library_name: peft
base_model: {combo['base']}
tags: [lora, combined-lora, lora-train]
---

# {name}

A LoRA adapter for `{combo['base']}` made by combining {len(combo['parents'])} adapters with
`combination={combo['combination']}` (PEFT's `add_weighted_adapter`). Load it like any adapter:
`PeftModel.from_pretrained(base, "<this folder>")`.

## Parents

| adapter | weight | r | alpha |
| --- | --- | --- | --- |
{parents}

## Result

{_rows([
    ("combination", combo["combination"]),
    ("density", combo.get("density")),
    ("rank", combo["r"]),
    ("modules", combo["modules"]),
    ("relative difference from the weighted sum of the parents' deltas", f"{combo['relative_error']:.3g}"),
    ("what that means", combo["meaning"]),
])}
"""
