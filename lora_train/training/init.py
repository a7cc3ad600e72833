"""LoftQ, PiSSA and OLoRA initialisation on a 4-bit base, on whatever device the run uses, and the conversion of the
adapter they produce to a plain LoRA on the original base.

PEFT's LoftQ path runs only on CUDA/XPU (and ignores the LoRA scale alpha / r), and PEFT refuses PiSSA on a 4-bit
base. Here every variant starts from the full-precision weights, read from the checkpoint one target at a time:
- LoftQ: alternately quantize W - scale * B A with bitsandbytes' own quantize/dequantize (the run's settings) and fit
  scale * B A to what the quantization lost (rank-r SVD). One round keeps the base exactly as loaded.
- PiSSA: scale * B A = the top-r singular part of W; the base holds the rest, quantized.
- OLoRA: B, A = the first r columns / rows of W's QR factors; the base holds W - scale * B A, quantized.

A residual-initialised adapter only makes sense on the base it was initialised against. So that every adapter runs
on the one original base, it is saved converted (PEFT's `path_initial_model_for_weight_conversion` semantics):
W_res + s B A = W + s [B, -B0] [A; A0], a plain LoRA of rank 2r with alpha doubled (x sqrt(2) with rsLoRA), so
the scale stays. It is exact against the full-precision base; on the 4-bit base it differs by the difference
between the rounding of W and of the residual.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lora_train.errors import UserError, hub_errors
from lora_train.schemas import LoraConfig, LoraInit, QuantConfig, QuantMode

ADAPTER = "default"  # the adapter name TRL/PEFT give the one adapter being trained
PREFIX = "base_model.model."


def changes_base(cfg: LoraConfig) -> bool:
    """True when the base the adapter trains on is not the base as loaded (so the adapter is saved converted)."""
    return cfg.init in (LoraInit.pissa, LoraInit.olora) or (cfg.init == LoraInit.loftq and cfg.loftq_iters > 1)


def check(lora: LoraConfig, quant: QuantConfig, loraplus_lr_ratio, sharded: bool) -> None:
    """The variant keys, before anything loads."""
    if not 1 <= lora.loftq_iters <= 64:
        raise UserError(f"lora.loftq_iters={lora.loftq_iters} is out of range: use 1 to 64 (1 keeps the 4-bit base)")
    if lora.loftq_iters != 1 and lora.init != LoraInit.loftq:
        raise UserError(f"lora.loftq_iters={lora.loftq_iters} only applies with lora.init=loftq "
                        f"(lora.init={lora.init.value})")
    if loraplus_lr_ratio is not None and not (0 < loraplus_lr_ratio < math.inf):
        raise UserError(f"train.loraplus_lr_ratio={loraplus_lr_ratio} is out of range: use a positive number "
                        "(the B matrices' learning rate / the A matrices'; 16 is a common start) or null")
    if loraplus_lr_ratio is not None and sharded:
        raise UserError("train.loraplus_lr_ratio builds the optimizer before FSDP / ZeRO-3 wrap the model, which they "
                        "do not support; use data parallel (accelerate=ddp) or train.loraplus_lr_ratio=null")
    if lora.init in (LoraInit.default, LoraInit.gaussian):
        return
    if lora.init == LoraInit.loftq and quant.mode not in (QuantMode.nf4, QuantMode.fp4):
        raise UserError(f"lora.init=loftq fits the adapter to the 4-bit rounding error, but quant.mode="
                        f"{quant.mode.value}; use quant=nf4 or quant=fp4, or another lora.init")
    if quant.mode == QuantMode.int8:
        raise UserError(f"lora.init={lora.init.value} on an int8 base is not supported; use quant=nf4, fp4 or none")
    if sharded:
        raise UserError(f"lora.init={lora.init.value} reads and rewrites whole weights, which FSDP / ZeRO-3 shard "
                        "across processes; use data parallel (accelerate=ddp) or lora.init=default")


@dataclass
class Initial:
    """The adapter's starting A0, B0 per module (CPU, float32), kept to convert the trained adapter."""

    init: LoraInit
    converts: bool  # the base was changed: save converted
    start: dict[str, tuple] = field(default_factory=dict)  # module (without PREFIX) -> (A0, B0)


# ---- the maths, on plain tensors ------------------------------------------------------------------------------

def pissa(w, r: int, scale: float):
    """A, B with scale * B A = W's top-r singular part (PEFT's pissa_init)."""
    import torch

    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = torch.sqrt(s[:r] / scale)
    return root[:, None] * vh[:r], u[:, :r] * root[None, :]


def olora(w, r: int, scale: float):
    """A, B = the first r rows of R and columns of Q in W = Q R (PEFT's olora_init; scale * B A leaves the base)."""
    import torch

    q, rr = torch.linalg.qr(w)
    return rr[:r].contiguous(), q[:, :r].contiguous()


def low_rank(res, r: int, scale: float):
    """A, B with scale * B A the best rank-r approximation of res."""
    import torch

    u, s, vh = torch.linalg.svd(res, full_matrices=False)
    root = torch.sqrt(s[:r] / scale)
    return root[:, None] * vh[:r], u[:, :r] * root[None, :]


def roundtrip(w, param):
    """W through bitsandbytes' 4-bit quantize/dequantize with the settings of the loaded weight `param`."""
    import bitsandbytes.functional as F

    q, state = F.quantize_4bit(w.to(param.quant_state.dtype), blocksize=param.blocksize,
                               compress_statistics=param.compress_statistics, quant_type=param.quant_type,
                               quant_storage=param.quant_storage)
    return F.dequantize_4bit(q, state).float()


def loftq(w, param, r: int, scale: float, iters: int):
    """(A, B, residual base in full precision) per LoftQ: Q = quant(W - s B A), s B A = rank-r fit of W - deq(Q).

    The first round quantizes W itself, so with one round the base stays exactly as loaded."""
    res = w
    for i in range(iters):
        a, b = low_rank(w - roundtrip(res, param), r, scale)
        if i + 1 < iters:
            res = w - scale * (b @ a)
    return a, b, res


# ---- on the model -------------------------------------------------------------------------------------------

class FullWeights:
    """The checkpoint's full-precision weight of each module in `names`, read one tensor at a time on demand (a 6B
    model's weights never sit in memory at once; .bin checkpoints, which cannot be read partially, are the
    exception)."""

    def __init__(self, model_path: str, revision, names: list[str]):
        folder = Path(model_path)
        if not folder.is_dir():
            folder = _snapshot(model_path, revision, ["*.json", "*.safetensors"])
            if not any(folder.glob("*.safetensors")):
                folder = _snapshot(model_path, revision, ["*.json", "pytorch_model*.bin"])
        keys = {}
        for n in names:
            keys[f"{n}.weight"] = n
            keys[f"{n.removeprefix('model.')}.weight"] = n
        self.where: dict[str, tuple[Path, str]] = {}
        self.loaded: dict = {}
        files = sorted(folder.glob("*.safetensors"))
        if files:
            from safetensors import safe_open

            for f in files:
                with safe_open(str(f), framework="pt", device="cpu") as st:
                    self.where.update({keys[k]: (f, k) for k in st.keys() if k in keys})
        else:
            import torch

            for f in sorted(folder.glob("pytorch_model*.bin")):
                state = torch.load(f, map_location="cpu", weights_only=True)
                self.loaded.update({keys[k]: v for k, v in state.items() if k in keys})
        missing = sorted(set(names) - set(self.where) - set(self.loaded))
        if missing:
            raise UserError(f"lora.init: the checkpoint in {folder} has no full-precision weight for {missing[:3]}; "
                            "residual initialisation needs the original weights (safetensors or .bin)")

    def __getitem__(self, name: str):
        if name in self.loaded:
            return self.loaded[name]
        from safetensors import safe_open

        f, key = self.where[name]
        with safe_open(str(f), framework="pt", device="cpu") as st:
            return st.get_tensor(key)


def _snapshot(repo: str, revision, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except hub_errors() as e:  # offline, unknown repo or revision
        raise UserError(f"lora.init: could not fetch the full-precision weights of {repo!r}: {e}") from e


def full_weights(model_path: str, revision, names: list[str]) -> dict:
    """Every named module's full-precision weight at once (small models and tests)."""
    weights = FullWeights(model_path, revision, names)
    return {n: weights[n] for n in names}


def lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix(PREFIX): m for n, m in model.named_modules()
            if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def set_base(layer, w) -> None:
    """Put the full-precision `w` into the layer's base, quantized as the loaded base was."""
    import torch

    base = layer.get_base_layer()
    param = base.weight
    if hasattr(param, "quant_state"):
        base.weight = type(param)(w.to(param.quant_state.dtype).cpu(), requires_grad=False,
                                  blocksize=param.blocksize, compress_statistics=param.compress_statistics,
                                  quant_type=param.quant_type, quant_storage=param.quant_storage,
                                  module=base).to(param.device)
    else:
        base.weight = torch.nn.Parameter(w.to(param.dtype).to(param.device), requires_grad=False)


def base_weight(layer):
    """The layer's base weight as the forward pass sees it (dequantized), float32."""
    from peft.utils.integrations import dequantize_module_weight

    return dequantize_module_weight(layer.get_base_layer()).float()


def initialise(model, lora: LoraConfig, model_path: str, revision) -> Initial | None:
    """Initialise the adapter of the PEFT `model` per lora.init (and the base, for the residual variants)."""
    import torch

    if lora.init in (LoraInit.default, LoraInit.gaussian):
        return None  # PEFT initialised it
    layers = lora_layers(model)
    weights = FullWeights(model_path, revision, sorted(layers))
    initial = Initial(init=lora.init, converts=changes_base(lora))
    with torch.no_grad():
        for name, layer in layers.items():
            if getattr(layer, "fan_in_fan_out", False):
                raise UserError(f"lora.init={lora.init.value}: {name} stores its weight transposed (Conv1D), "
                                "which this initialisation does not handle; use lora.init=default")
            device = layer.lora_A[ADAPTER].weight.device
            w = weights[name].to(device=device, dtype=torch.float32)
            r, scale = layer.r[ADAPTER], layer.scaling[ADAPTER]
            if lora.init == LoraInit.loftq:
                a, b, res = loftq(w, layer.get_base_layer().weight, r, scale, lora.loftq_iters)
            else:
                a, b = (pissa if lora.init == LoraInit.pissa else olora)(w, r, scale)
                res = w - scale * (b @ a)
            if initial.converts:
                set_base(layer, res)
            for mat, value in ((layer.lora_A[ADAPTER].weight, a), (layer.lora_B[ADAPTER].weight, b)):
                mat.data = value.to(mat.dtype).contiguous()
            if lora.use_dora:  # PEFT set the magnitude from the old base and B = 0: recompute it for the new start
                layer.lora_magnitude_vector[ADAPTER].update_layer(
                    base_layer=layer.get_base_layer(), lora_A=layer.lora_A[ADAPTER].weight.float(),
                    lora_B=layer.lora_B[ADAPTER].weight.float(), scaling=scale)
                layer.lora_magnitude_vector[ADAPTER].weight.data = \
                    layer.lora_magnitude_vector[ADAPTER].weight.data.float()
            initial.start[name] = (a.float().cpu(), b.float().cpu())
    if initial.converts:  # checkpoints of this run are residual adapters: marked (adapters.RESIDUAL_MARKS), refused
        model.peft_config[ADAPTER].init_lora_weights = lora.init.value
    return initial


def convert(folder: Path, initial: Initial) -> None:
    """Rewrite the adapter saved in `folder` as a plain LoRA on the original base (rank 2r; see the docstring)."""
    from safetensors.torch import load_file, save_file

    weights_file = folder / "adapter_model.safetensors"
    state = load_file(str(weights_file))
    done = set()
    for key in list(state):
        if ".lora_A." not in key and not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix(PREFIX).split(".lora_A")[0]
        if module not in initial.start:
            raise RuntimeError(f"converting the adapter: no starting weights recorded for {module}")
        a0, b0 = initial.start[module]
        b_key = key.replace(".lora_A", ".lora_B")
        a, b = state[key].float(), state[b_key].float()
        state[key] = _cat([a, a0], 0)
        state[b_key] = _cat([b, -b0], 1)
        done.add(module)
    if done != set(initial.start):
        raise RuntimeError(f"converting the adapter: modules {sorted(set(initial.start) - done)[:3]} were not saved")
    save_file(state, str(weights_file), metadata={"format": "pt"})
    cfg_file = folder / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["r"] *= 2
    cfg["lora_alpha"] *= 2 ** 0.5 if cfg.get("use_rslora") else 2  # the scale alpha / r (or / sqrt r) stays
    for key in ("rank_pattern", "alpha_pattern"):
        cfg[key] = {k: 2 * v for k, v in (cfg.get(key) or {}).items()}
    cfg["init_lora_weights"] = True
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _cat(parts, dim):
    import torch

    return torch.cat(parts, dim=dim).contiguous()


def loraplus_optimizer(trainer, ratio: float):
    """LoRA+ (PEFT's create_loraplus_optimizer) with the optimizer class and arguments train.optim names."""
    from peft.optimizers import create_loraplus_optimizer

    cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    return create_loraplus_optimizer(trainer.model, cls, lr=trainer.args.learning_rate, loraplus_lr_ratio=ratio,
                                     weight_decay=trainer.args.weight_decay, **kwargs)
