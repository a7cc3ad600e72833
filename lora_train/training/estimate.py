"""Peak-memory and FLOPs estimate of a training run, from the model's config alone (nothing is loaded).

`lora-train dry_run=true` prints it. The arithmetic, per process:

- weights: every nn.Linear of the decoder stored per `quant.mode` (NF4/FP4: 4 bits + one absmax per 64 weights,
  itself 8-bit with double quantization, as in the QLoRA paper: 4.127 bits/param with double quant, 4.5 without;
  int8: 8 bits + a float per row), everything else (embeddings, norms, biases, LM head) in the compute dtype;
- LoRA: float32 weights, float32 gradients and the optimizer's state (AdamW: 2 float32 per parameter; 8-bit
  optimizers: 2 bytes);
- activations kept for backward, per token and layer: about 10 x d_model + 4 x d_ff values in the compute dtype
  without gradient checkpointing (measured on GPT-J blocks: attention inputs and outputs, rotary pieces, LoRA
  dropout, the MLP's GELU intermediates); with checkpointing, one d_model value per layer plus one layer's worth
  being recomputed;
- the LM head's logits for the loss (TRL's fused head works in chunks) and one dequantized weight matrix at a time.

FLOPs per token: a forward pass costs 2 FLOPs per weight of every matmul plus the attention's 4 x d_model x T per
layer. LoRA freezes the base, so backward computes input gradients only (one more forward's worth for matmuls,
two for attention) and no weight gradients: 2x forward for the matmuls + 3x for attention, versus 3x for full
fine-tuning. Gradient checkpointing adds one more forward; it is counted in `hardware_flops_per_token` but not
in `model_flops_per_token`, which is what MFU divides by.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache

from lora_train.schemas import DType, QuantMode, TrainJob

GIB = 2**30
ACT_D, ACT_FF = 10, 4  # values kept per token and layer for backward: ACT_D x d_model + ACT_FF x d_ff
LOGIT_CHUNK = 32768  # TRL's fused LM head scores at most this many tokens at once
BYTES = {DType.float32: 4, DType.bfloat16: 2, DType.float16: 2}


@dataclass
class Shape:
    """What the estimate needs to know about a model; `shape_of` reads it off a meta-device instance."""

    n_layer: int
    d_model: int
    d_ff: int
    vocab: int
    linear: list[tuple[str, int, int]]  # decoder nn.Linear layers (name, in, out), the LM head excluded
    head_params: int  # LM head weight (+ bias)
    other_params: int  # embeddings, norms, biases: never quantized
    lora_params: int = 0

    @property
    def linear_params(self) -> int:
        return sum(i * o for _, i, o in self.linear)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.head_params + self.other_params


def shape_of(config, lora_cfg=None) -> Shape:
    """Count a model's parameters by kind on the meta device (no memory, no download beyond config.json)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # not accelerate's init_empty_weights: it unties tied embeddings (counted twice)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    head = model.get_output_embeddings()
    linear, head_params, seen = [], 0, set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            if mod is head:
                head_params = sum(p.numel() for p in mod.parameters())
                seen.update(id(p) for p in mod.parameters())
            else:
                linear.append((name, mod.in_features, mod.out_features))
                seen.add(id(mod.weight))  # its bias, if any, stays unquantized: counted in `other`
    other = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    get = lambda *keys: next(getattr(config, k) for k in keys if getattr(config, k, None))  # noqa: E731
    d = get("n_embd", "hidden_size", "d_model")
    d_ff = getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * d
    s = Shape(n_layer=get("n_layer", "num_hidden_layers"), d_model=d, d_ff=d_ff, vocab=config.vocab_size,
              linear=linear, head_params=head_params, other_params=other)
    if lora_cfg is not None:
        s.lora_params = lora_params(s, lora_cfg)
    return s


def lora_params(shape: Shape, lora_cfg) -> int:
    """LoRA A and B matrices of every targeted linear layer: r x (in + out) each."""
    targets = list(lora_cfg.target_modules)
    hit = [(i, o) for name, i, o in shape.linear
           if targets == ["all-linear"] or name.rsplit(".", 1)[-1] in targets]
    return sum(lora_cfg.r * (i + o) for i, o in hit)


def bits_per_weight(mode: QuantMode, double_quant: bool, dtype_bytes: int) -> float:
    if mode in (QuantMode.nf4, QuantMode.fp4):
        # 4-bit codes + absmax per 64-weight block: fp32 (32/64 bit), or 8-bit with one fp32 per 256 blocks.
        return 4 + (8 / 64 + 32 / (64 * 256) if double_quant else 32 / 64)
    if mode == QuantMode.int8:
        return 8.0
    return 8.0 * dtype_bytes


@dataclass
class Estimate:
    params: int
    trainable: int
    weights: float  # bytes
    lora_state: float  # LoRA weights + gradients + optimizer state
    activations: float  # with the configured checkpointing
    activations_no_gc: float
    activations_gc: float
    head: float  # logits for the loss
    dequant: float  # one dequantized weight matrix (forward) and its use in backward
    gradient_checkpointing: bool
    tokens: int  # batch x sequence length
    model_flops_per_token: float  # forward + LoRA backward, no recomputation: what MFU counts
    hardware_flops_per_token: float  # including gradient checkpointing's recomputed forward
    forward_flops_per_token: float
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.lora_state + self.activations + self.head + self.dequant

    def lines(self) -> list[str]:
        g = lambda b: f"{b / GIB:.2f} GiB" if b >= 0.1 * GIB else f"{b / 2**20:.1f} MiB"  # noqa: E731
        other = g(self.activations_no_gc if self.gradient_checkpointing else self.activations_gc)
        return [
            f"memory:     ~{g(self.total)} peak per process = weights {g(self.weights)} + LoRA/grads/optimizer "
            f"{g(self.lora_state)} + activations {g(self.activations)} (gradient checkpointing "
            f"{'on' if self.gradient_checkpointing else 'off'}; {other} with it {'off' if self.gradient_checkpointing else 'on'})"
            f" + logits {g(self.head)} + dequantization {g(self.dequant)}; tensors only, the runtime itself adds "
            f"~0.5 GiB (CUDA context, or Python and libraries on a CPU)",
            f"compute:    {self.model_flops_per_token / 1e9:.3f} GFLOP per trained token (forward "
            f"{self.forward_flops_per_token / 1e9:.3f}; {self.hardware_flops_per_token / 1e9:.3f} with recomputation) "
            f"at {self.tokens} tokens per micro-batch",
        ] + [f"            {n}" for n in self.notes]


def estimate(shape: Shape, job: TrainJob, compute: DType, seq_len: int | None = None,
             batch: int | None = None) -> Estimate:
    """The estimate for `job` on a model of `shape`, computing in `compute` (the effective compute dtype)."""
    T = seq_len or job.data.max_length
    B = batch or job.train.per_device_batch_size
    e = BYTES.get(compute, 4)
    q = job.quant
    quantized = q.mode != QuantMode.none
    store = e if quantized or job.model.dtype == DType.auto else BYTES[job.model.dtype]
    weights = shape.linear_params * bits_per_weight(q.mode, q.double_quant, store) / 8
    weights += (shape.head_params + shape.other_params) * store
    optim = job.train.optim.lower()
    opt_bytes = 2 if ("8bit" in optim or "8_bit" in optim) else (0 if optim == "sgd" else 8)
    lora_state = shape.lora_params * (4 + 4 + opt_bytes)
    L, d, ff = shape.n_layer, shape.d_model, shape.d_ff
    per_layer = (ACT_D * d + ACT_FF * ff) * e
    act_no_gc = B * T * L * per_layer
    act_gc = B * T * (L * d * e + per_layer + 2 * d * 4)
    gc = job.train.gradient_checkpointing
    head = min(B * T, LOGIT_CHUNK) * shape.vocab * 4 * 2  # float32 logits + their softmax / gradient
    biggest = max((i * o for _, i, o in shape.linear), default=0)
    dequant = 2 * biggest * e if quantized else 0
    lin_fwd = 2 * (shape.linear_params + shape.head_params + shape.lora_params)
    attn_fwd = 4 * L * d * T
    model_flops = 2 * lin_fwd + 3 * attn_fwd
    notes = []
    if not quantized and store == 4 and compute != DType.float32:
        notes.append("weights stored in float32 (model.dtype), cast per matmul")
    return Estimate(
        params=shape.total_params, trainable=shape.lora_params, weights=weights, lora_state=lora_state,
        activations=act_gc if gc else act_no_gc, activations_no_gc=act_no_gc, activations_gc=act_gc, head=head,
        dequant=dequant, gradient_checkpointing=gc, tokens=B * T, model_flops_per_token=model_flops,
        hardware_flops_per_token=model_flops + (lin_fwd + attn_fwd if gc else 0), forward_flops_per_token=lin_fwd
        + attn_fwd, notes=notes,
    )


# Hub models whose shape a dry run knows without the Hub: transformers' GPTJConfig defaults are GPT-J-6B's
# (tests/training/test_estimate.py checks the parameter count against the published one).
OFFLINE_SHAPES = {"EleutherAI/gpt-j-6b": "gptj"}


def model_config(model_path: str, job: TrainJob):
    """The model's config (a local folder or the Hub); offline, the shape of a known Hub model."""
    read = _config.__wrapped__ if os.path.isdir(model_path) else _config  # a local folder may be rebuilt: reread it
    return read(model_path, job.model.revision, job.model.trust_remote_code)


@lru_cache(maxsize=8)  # a dry run asks the Hub three times (auto checkpointing, parameter counts, estimate)
def _config(model_path: str, revision: str | None, trust_remote_code: bool):
    from transformers import CONFIG_MAPPING, AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path, revision=revision, trust_remote_code=trust_remote_code)
    except OSError:
        if model_path not in OFFLINE_SHAPES:
            raise
        return CONFIG_MAPPING[OFFLINE_SHAPES[model_path]]()


def estimate_for(model_path: str, job: TrainJob) -> Estimate:
    """Read the model's config, estimate."""
    from lora_train.model import compute_dtype

    return estimate(shape_of(model_config(model_path, job), job.lora), job, compute_dtype(job.quant))


AUTO_SHARE = 0.8  # share of the free memory that train.gradient_checkpointing=auto lets a run plan to use
RUNTIME = 0.5 * GIB  # what the tensors do not count: CUDA context, or Python and libraries on a CPU


def free_memory() -> tuple[float, str]:
    """(bytes free, what) on the device this process trains on."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.mem_get_info()[0]), f"free on {torch.cuda.get_device_name()}"
    return float(psutil.virtual_memory().available), "RAM available"


def with_checkpointing(job: TrainJob, on: bool) -> TrainJob:
    return replace(job, train=replace(job.train, gradient_checkpointing=on))


def resolve_checkpointing(job: TrainJob, model_path: str, free: tuple[float, str] | None = None):
    """(job with train.gradient_checkpointing a bool, the plan's line on the decision or None). `auto` turns it off
    when the estimated peak without it fits in AUTO_SHARE of the free memory: the recompute is pure cost then."""
    if job.train.gradient_checkpointing != "auto":
        return job, None
    try:
        need = estimate_for(model_path, with_checkpointing(job, False)).total + RUNTIME
    except (OSError, ValueError, KeyError, AttributeError) as e:  # no config to read, or one it cannot size
        # The safe choice, said out loud (the plan line is only printed by a dry run): a bug stays a traceback.
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"warning: gradient checkpointing turned on: no memory estimate for {model_path} ({why})",
              file=sys.stderr, flush=True)
        return with_checkpointing(job, True), f"checkpoint: auto -> on (no estimate: {why})"
    have, what = free or free_memory()
    on = need > AUTO_SHARE * have
    return with_checkpointing(job, on), (
        f"checkpoint: auto -> gradient checkpointing {'on' if on else 'off'}: peak without it ~{need / GIB:.2f} GiB, "
        f"{have / GIB:.1f} GiB {what} ({AUTO_SHARE:.0%} usable)")
