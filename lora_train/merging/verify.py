"""Verification of a merged model: the same held-out examples through the merged model and through the adapter on
its training-time base (PEFT on the base loaded as training loaded it, 4-bit included), compared token by token.

The reference is what the adapter was trained and evaluated as, so the numbers say how much the merge itself
changed the model: merging into the dequantized weights should agree to float rounding; merging into the original
weights differs by the quantization error the adapter was trained around.
"""

from __future__ import annotations

import gc
from pathlib import Path

from lora_train.adapters import AdapterInfo
from lora_train.schemas import DataConfig, DType, ModelConfig, QuantConfig, QuantMode
from lora_train.schemas.merge import MergeOptions

ROWS = [  # (report key, label, format)
    ("max_abs_logit_diff", "max |logit difference|", "{:.3g}"),
    ("mean_abs_logit_diff", "mean |logit difference|", "{:.3g}"),
    ("mean_kl", "mean KL(adapter || merged), nats/token", "{:.3g}"),
    ("max_kl", "max KL at one position", "{:.3g}"),
    ("top1_agreement", "top-1 agreement", "{:.4f}"),
    ("eval_loss_adapter", "eval loss, adapter on training base", "{:.5f}"),
    ("eval_loss_merged", "eval loss, merged model", "{:.5f}"),
]


def examples(info: AdapterInfo, opts: MergeOptions, tokenizer) -> tuple[list[dict], str]:
    """Held-out examples: the adapter's own validation split (rebuilt with its data config and seed) when its data
    is local, else the bundled sample. Each cut to merge.verify_max_length tokens."""
    from lora_train.data.build import build_datasets, is_local, resolve_source

    job = info.job
    if job is not None and is_local(resolve_source(job.data.source)) and Path(resolve_source(job.data.source)).is_file():
        train, val, _ = build_datasets(job.data, tokenizer, job.seed)
        ds, source = (val, f"{job.data.source} (validation split)") if val is not None else (train, job.data.source)
    else:
        cfg = DataConfig(max_length=opts.verify_max_length)
        ds, _, _ = build_datasets(cfg, tokenizer, 0)
        source = f"{cfg.source} (bundled sample)"
    n = min(opts.verify_examples, len(ds))
    rows = [{k: ds[i][k][: opts.verify_max_length] for k in ("input_ids", "labels")} for i in range(n)]
    return rows, source


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run(model, rows) -> list:
    """Per example: float32 logits over the vocabulary at every position (kept on the CPU)."""
    import torch

    out = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=model.device)
            out.append(model(input_ids=ids).logits[0].float().cpu())
    return out


def _loss(logp, labels) -> tuple[float, int]:
    import torch

    labels = torch.tensor(labels[1:])
    keep = labels != -100
    if not keep.any():
        return 0.0, 0
    return float(-logp[:-1][keep].gather(1, labels[keep, None]).sum()), int(keep.sum())


def dequantized_in_float32(model) -> None:
    """On a CPU: the 4-bit model as the float32 network it stands for. Each 4-bit linear becomes a plain float32
    linear holding exactly the weights bitsandbytes dequantizes from its codes (the weights training ran on), and
    every other weight moves to float32. bitsandbytes' CPU 4-bit kernels compute in the weights' dtype (bf16 where
    training loaded them in bf16) with their own rounding; against a float32 merged model that rounding alone flips
    near-tied top-1 tokens the merge did not change, and says nothing about the merge."""
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Linear4bit):
                plain = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                        device="meta")
                plain.weight = torch.nn.Parameter(
                    dequantize_4bit(child.weight.data, child.weight.quant_state).float(), requires_grad=False)
                if child.bias is not None:
                    plain.bias = torch.nn.Parameter(child.bias.data.float(), requires_grad=False)
                setattr(module, name, plain)
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.float()
    model.hf_quantizer, model.is_quantized, model.is_loaded_in_4bit = None, False, False


def compare(info: AdapterInfo, base_folder: Path, model_cfg: ModelConfig, quant: QuantConfig, merged: Path,
            opts: MergeOptions) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_train.model import load_base

    tokenizer = AutoTokenizer.from_pretrained(merged)
    rows, source = examples(info, opts, tokenizer)
    on_gpu = torch.cuda.is_available()
    # On a CPU, compute in float32 (bf16/fp16 are emulated there, 10-100x slower); the weights are what they are.
    ref_cfg = model_cfg if on_gpu or quant.mode != QuantMode.none else \
        ModelConfig(**{**model_cfg.__dict__, "dtype": DType.float32})
    base = load_base(str(base_folder), ref_cfg, quant, device_map={"": 0} if on_gpu else None)
    if not on_gpu and quant.mode in (QuantMode.nf4, QuantMode.fp4):
        dequantized_in_float32(base)
    reference = PeftModel.from_pretrained(base, info.folder).eval()
    ref = _run(reference, rows)
    del reference, base
    gc.collect()
    model = AutoModelForCausalLM.from_pretrained(merged, dtype="auto" if on_gpu else torch.float32,
                                                 device_map={"": 0} if on_gpu else None).eval()
    got = _run(model, rows)
    del model
    gc.collect()

    max_diff = sum_diff = sum_kl = max_kl = 0.0
    agree = positions = elements = 0
    loss_ref = loss_got = 0.0
    tokens = 0
    for a, b, row in zip(ref, got, rows):
        diff = (a - b).abs()
        max_diff, sum_diff, elements = max(max_diff, float(diff.max())), sum_diff + float(diff.sum()), elements + diff.numel()
        a, b = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        kl = (a.exp() * (a - b)).sum(-1).clamp_min(0)  # KL >= 0; float rounding can dip below by ~1e-9
        max_kl, sum_kl = max(max_kl, float(kl.max())), sum_kl + float(kl.sum())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += a.shape[0]
        la, n = _loss(a, row["labels"])
        lb, _ = _loss(b, row["labels"])
        loss_ref, loss_got, tokens = loss_ref + la, loss_got + lb, tokens + n
    report = {
        "examples": len(rows), "positions": positions, "source": source,
        "reference": f"{info.folder} on {model_cfg.name_or_path} ({quant.mode.value})",
        "max_abs_logit_diff": max_diff, "mean_abs_logit_diff": sum_diff / max(1, elements),
        "mean_kl": sum_kl / max(1, positions), "max_kl": max_kl, "top1_agreement": agree / max(1, positions),
        "eval_loss_adapter": loss_ref / max(1, tokens), "eval_loss_merged": loss_got / max(1, tokens),
    }
    report["failed"] = failures(report, opts)
    return report


def failures(r: dict, o: MergeOptions) -> list[str]:
    checks = [
        ("mean KL", r["mean_kl"], o.max_mean_kl, "merge.max_mean_kl", lambda v, t: v <= t),
        ("top-1 agreement", r["top1_agreement"], o.min_top1_agreement, "merge.min_top1_agreement", lambda v, t: v >= t),
        ("max |logit difference|", r["max_abs_logit_diff"], o.max_abs_logit_diff, "merge.max_abs_logit_diff",
         lambda v, t: v <= t),
        ("eval loss increase", r["eval_loss_merged"] - r["eval_loss_adapter"], o.max_eval_loss_increase,
         "merge.max_eval_loss_increase", lambda v, t: v <= t),
    ]
    return [f"{what} {value:.4g} beyond {key}={limit}" for what, value, limit, key, ok in checks
            if limit is not None and not ok(value, limit)]


def table(r: dict) -> str:
    lines = [f"verification: {r['examples']} held-out examples, {r['positions']} positions, from {r['source']}",
             "| measure | value |", "| --- | --- |"]
    lines += [f"| {label} | {fmt.format(r[key])} |" for key, label, fmt in ROWS]
    lines.append(f"| verdict | {'FAILED: ' + '; '.join(r['failed']) if r['failed'] else 'passed'} |")
    return "\n".join(lines)
