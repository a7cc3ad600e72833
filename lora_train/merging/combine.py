"""`lora-merge adapters=[a,b,...]`: several adapters of one base combined into a new adapter with PEFT's
`add_weighted_adapter`, guarded where PEFT would silently write a wrong adapter, and checked against the maths.

    lora-merge adapters=[adapters/a,adapters/b] weights=[0.7,0.3] combination=cat output=adapters/ab
    lora-merge adapters=[adapters/a,adapters/b] combination=ties density=0.5 output=adapters/ab_ties

What PEFT gets wrong, and what we do about it:
- rsLoRA parents: the new adapter copies `use_rslora` while setting alpha = r, so it would load with scale
  sqrt(r) instead of 1. We write it with use_rslora=false (the combined weights already carry each parent's scale).
- DoRA parents: the new adapter would get a magnitude vector initialised afresh, unrelated to the parents. Refused.
- Negative weights with the methods that combine A's and B's separately (linear, ties, dare_*, magnitude_prune):
  the sign lands on the A side only, so the cross terms B_i A_j get arbitrary signs: not a subtraction. Refused;
  cat and svd subtract exactly.
- Different ranks where the method needs equal ones, a method given a parameter it does not take, or a single
  adapter given a method that needs several (PEFT silently falls back to linear): refused, naming the adapters.
After combining, the new adapter's delta is compared with the weighted sum of the parents' deltas; `cat` (and `svd`
at full rank) must match it exactly or nothing is written.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from lora_train import artifacts
from lora_train.adapters import BASE_FILE, AdapterInfo, check_against_config, check_against_model, read_adapter
from lora_train.errors import UserError
from lora_train.merging import card as merge_card
from lora_train.merging.base_weights import UNSUPPORTED
from lora_train.schemas.merge import Combination, MergeJob
from lora_train.schemas.model import DType

C = Combination
TAKES_DENSITY = {C.ties, C.dare_linear, C.dare_ties, C.magnitude_prune}
SAME_RANK = {C.linear, C.ties, C.dare_linear, C.dare_ties, C.magnitude_prune}  # combine A's and B's separately
EXACT = {C.cat}  # the result is exactly the weighted sum of the deltas
MEANING = {
    C.linear: "weighted sums of the A's and of the B's; with several adapters this adds cross terms B_i A_j",
    C.cat: "exactly the weighted sum of the parents' deltas (rank = sum of ranks)",
    C.svd: "the weighted sum of the parents' deltas, truncated to the rank by SVD",
    C.ties: "TIES on the A's and B's separately (trim, elect sign, disjoint mean): a heuristic, not a sum",
    C.dare_linear: "DARE (random drop, rescale) on the A's and B's, then linear: a random heuristic",
    C.dare_ties: "DARE then TIES on the A's and B's: a random heuristic",
    C.magnitude_prune: "largest-magnitude entries of the A's and B's kept, then linear: a heuristic",
}


def check_request(job: MergeJob) -> list[float]:
    """Everything that can be refused before reading an adapter; returns the weights."""
    m, n = job.combination, len(job.adapters)
    if not job.output:
        raise UserError("output=...: where to write the combined adapter?")
    weights = list(job.weights) or [1.0] * n
    if len(weights) != n:
        raise UserError(f"weights={list(job.weights)}: give one weight per adapter ({n} adapters)")
    if m in TAKES_DENSITY:
        if job.density is None or not 0 < job.density <= 1:
            raise UserError(f"combination={m.value} needs density=<share of each update kept, in (0, 1]> "
                            f"(got {job.density})")
    elif job.density is not None:
        raise UserError(f"combination={m.value} does not take density (only ties, dare_linear, dare_ties, "
                        "magnitude_prune do)")
    if job.svd_rank is not None and (m != C.svd or job.svd_rank <= 0):
        raise UserError(f"svd_rank={job.svd_rank}: only combination=svd takes it, and it must be positive")
    if job.majority_sign_method not in ("total", "frequency"):
        raise UserError(f"majority_sign_method={job.majority_sign_method!r}: use total or frequency")
    if job.majority_sign_method != "total" and m not in (C.ties, C.dare_ties):
        raise UserError(f"combination={m.value} does not take majority_sign_method (only ties and dare_ties do)")
    if n == 1 and m not in (C.linear, C.cat):
        raise UserError(f"combination={m.value} needs at least two adapters (PEFT would silently use linear)")
    if m in SAME_RANK and n > 1 and any(w < 0 for w in weights):
        raise UserError(f"combination={m.value} with a negative weight ({weights}) does not subtract: the sign "
                        "reaches only the A side and the cross terms B_i A_j keep arbitrary signs; use "
                        "combination=cat (exact) or svd")
    if any(not math.isfinite(w) for w in weights):
        raise UserError(f"weights={weights}: every weight must be a finite number")
    return weights


def check_parents(infos: list[AdapterInfo], m: Combination) -> None:
    first = infos[0]
    for info in infos:
        for key, what in {**UNSUPPORTED, "use_dora": "DoRA"}.items():
            if info.peft_config.get(key):
                raise UserError(f"adapter {info.name!r} uses {what}; combining it would give a wrong adapter "
                                "(PEFT re-initialises or ignores it)")
        if info.base_name_or_path != first.base_name_or_path or any(
                info.base.get(k) != first.base.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                                 "vocab_size")):
            raise UserError(f"adapters {first.name!r} (base {first.base_name_or_path}) and {info.name!r} (base "
                            f"{info.base_name_or_path}) were trained on different bases and cannot be combined")
    if m in SAME_RANK and len(infos) > 1:
        ranks = {info.name: sorted({r for _, _, r in info.modules.values()}) for info in infos}
        if len({tuple(r) for r in ranks.values()}) > 1 or any(len(r) > 1 for r in ranks.values()):
            raise UserError(f"combination={m.value} needs every adapter to have one and the same rank, but ranks "
                            f"are {ranks}; use combination=cat or combination=svd")


def combine(job: MergeJob) -> Path:
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    from lora_train.merging.full_model import base_of
    from lora_train.model import load_base, resolve_model

    weights = check_request(job)
    final = Path(job.output)
    artifacts.check_writable(final, job.overwrite, key="output")
    infos = [read_adapter(a, allow_pickle=job.allow_pickle) for a in job.adapters]
    if len({i.folder.resolve() for i in infos}) != len(infos):
        raise UserError(f"adapters={list(job.adapters)} lists the same folder twice; give it one larger weight")
    check_parents(infos, job.combination)
    model_cfg, quant = base_of(job, infos[0])
    # PEFT creates the combined adapter in the dtype of the base's layers: a bf16 base (bf16 compute, or a bf16
    # checkpoint) would round the combination to 3 significant digits. Combining is arithmetic on the LoRA factors
    # alone, so the base loads in float32; a 4-bit base's quantized layers stay 4-bit.
    model_cfg = dataclasses.replace(model_cfg, dtype=DType.float32)
    base = load_base(resolve_model(model_cfg), model_cfg, dataclasses.replace(quant, compute_dtype=DType.float32))
    label = f"base {model_cfg.name_or_path!r}"
    for info in infos:
        check_against_config(info, base.config, label)
        check_against_model(info, base, label)
    names = [f"parent{i}" for i in range(len(infos))]
    model = PeftModel.from_pretrained(base, infos[0].folder, adapter_name=names[0])
    for name, info in zip(names[1:], infos[1:]):
        model.load_adapter(info.folder, adapter_name=name)
    torch.manual_seed(job.seed)  # dare_* drop at random
    model.add_weighted_adapter(names, weights, "combined", combination_type=job.combination.value,
                               svd_rank=job.svd_rank, density=job.density,
                               majority_sign_method=job.majority_sign_method)
    config = model.peft_config["combined"]
    config.use_rslora = False  # see the module docstring: the weights already carry every parent's scale
    state = {k: v.detach().float().cpu().contiguous()
             for k, v in get_peft_model_state_dict(model, adapter_name="combined").items()}
    parents = [{k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(model, adapter_name=n).items()}
               for n in names]
    error = relative_error(state, config.lora_alpha / config.r, parents, infos, weights)
    if job.combination in EXACT or (job.combination == C.svd and config.r >= sum(max(r for *_, r in i.modules.values())
                                                                                 for i in infos)):
        if error > 1e-4:
            raise RuntimeError(f"PEFT's {job.combination.value} result is {error:.3g} away from the weighted sum of "
                               "the deltas; nothing was written")
    combo = {"combination": job.combination.value, "density": job.density, "r": config.r, "modules": len(state) // 2,
             "base": infos[0].base_name_or_path, "relative_error": error, "meaning": MEANING[job.combination],
             "parents": [{"folder": str(i.folder), "weight": w, "r": i.peft_config.get("r"),
                          "alpha": i.peft_config.get("lora_alpha"), "use_rslora": bool(i.peft_config.get("use_rslora"))}
                         for i, w in zip(infos, weights)]}
    staging = artifacts.staging_dir(final)
    try:
        _write(staging, infos[0], config, state, combo, final.name)
        artifacts.publish(staging, final, job.overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"combined adapter written to {final} (combination={combo['combination']}, r={config.r}, "
          f"relative difference from the weighted sum of deltas {error:.3g})", flush=True)
    return final


def relative_error(state: dict, scale: float, parents: list[dict], infos: list[AdapterInfo], weights) -> float:
    """|| delta(new) - sum_i w_i delta(parent_i) ||_F / || sum_i w_i delta(parent_i) ||_F over all modules."""
    import torch

    from lora_train.merging.base_weights import lora_scale

    num = den = 0.0
    for key in (k for k in state if ".lora_A." in k):
        b_key = key.replace(".lora_A.", ".lora_B.")
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        got = scale * (state[b_key] @ state[key])
        want = torch.zeros_like(got)
        for p, info, w in zip(parents, infos, weights):
            if key in p:
                want += w * lora_scale(info, module, p[key].shape[0]) * (p[b_key] @ p[key])
        num += float((got - want).square().sum())
        den += float(want.square().sum())
    return math.sqrt(num) / max(math.sqrt(den), 1e-30)


def _write(staging: Path, first: AdapterInfo, config, state: dict, combo: dict, name: str) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    save_file(state, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(staging))
    if (first.folder / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(first.folder).save_pretrained(staging)
    if first.job is not None:  # later commands read the base (model, quantization) from it
        job = first.job
        job.lora.r, job.lora.alpha = config.r, int(config.lora_alpha)
        job.lora.target_modules = sorted(config.target_modules) if not isinstance(config.target_modules, str) \
            else [config.target_modules]
        job.run_name = name
        # The combination is a plain LoRA on the original base, whatever its parents' variants were.
        job.lora.init, job.lora.loftq_iters, job.lora.use_dora = type(job.lora.init).default, 1, False
        job.lora.use_rslora = bool(config.use_rslora)
        (staging / "lora_train.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(job)))
    if first.base:
        artifacts.write_json(staging / BASE_FILE, first.base)
    artifacts.write_json(staging / "combination.json", combo)
    (staging / "README.md").write_text(merge_card.render_combined(name, combo))
