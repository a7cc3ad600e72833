"""The weights a merge adds to: the base checkpoint (streamed), its quantization-rounded version, and the LoRA deltas.

A delta is W' - W = scale * B @ A with scale = alpha / r (alpha / sqrt(r) with rsLoRA), exactly what PEFT's LoRA
layer adds in its forward pass. A DoRA adapter also rescales each output row: W' = m * (W + scale * B @ A) / ||row||,
with the norm taken over the weights the adapter runs on (the dequantized ones for merge.base=dequantized), as PEFT's
DoRA layer does. verify.py checks the merged model against PEFT itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_train.adapters import _LORA_KEY, AdapterInfo
from lora_train.errors import UserError, corrupt_file_errors, hub_errors
from lora_train.merging.shards import checkpoint_files, iter_tensors, tensor_shapes
from lora_train.schemas import ModelConfig, QuantConfig

PREFIX = "base_model.model."
# Adapter features whose merge is neither W + scale * B @ A nor DoRA's rescaling of it; refused rather than merged
# wrongly.
UNSUPPORTED = {"lora_bias": "LoRA bias", "layer_replication": "layer replication",
               "target_parameters": "target_parameters", "trainable_token_indices": "trainable tokens"}
MAGNITUDE = ".lora_magnitude_vector"  # DoRA's per-output-row magnitude (PEFT's saved key ends with it)


@dataclass
class BaseCheckpoint:
    folder: Path
    label: str
    files: list[Path]
    shapes: dict[str, tuple[int, ...]]
    config: object  # transformers PretrainedConfig

    @classmethod
    def open(cls, model_cfg: ModelConfig, allow_pickle: bool) -> "BaseCheckpoint":
        from transformers import AutoConfig

        folder = local_folder(model_cfg, allow_pickle)
        label = f"base {model_cfg.name_or_path!r}"
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=model_cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"{label}: unreadable config.json ({e})") from e
        files = checkpoint_files(folder, allow_pickle)
        try:
            shapes = tensor_shapes(files)
        except corrupt_file_errors() as e:  # a truncated or corrupt shard: name it
            raise UserError(f"{label}: unreadable weight file in {folder} ({e})") from e
        return cls(folder=folder, label=label, files=files, shapes=shapes, config=config)

    @property
    def dtype(self):
        """The checkpoint's own dtype, as its config records it."""
        import torch

        d = getattr(self.config, "dtype", None) or getattr(self.config, "torch_dtype", None)
        if isinstance(d, str):
            d = getattr(torch, d, None)
        return d if isinstance(d, torch.dtype) else None

    def tensors(self):
        return iter_tensors(self.files)

    def write_config(self, folder: Path, dtype) -> None:
        import copy

        config = copy.deepcopy(self.config)
        config.dtype = dtype
        config.save_pretrained(folder)
        gen = self.folder / "generation_config.json"
        if gen.is_file():
            (folder / gen.name).write_text(gen.read_text())


def local_folder(model_cfg: ModelConfig, allow_pickle: bool) -> Path:
    """A local model folder: the builtin tiny model, a folder, or a Hub snapshot (weights and configs only)."""
    from lora_train.model import resolve_model

    path = resolve_model(model_cfg)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"] + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(path, revision=model_cfg.revision, allow_patterns=patterns))
    except hub_errors() as e:  # offline, unknown repo or revision: all user-fixable
        raise UserError(f"model {path!r} (revision {model_cfg.revision!r}): could not download: {e}") from e


def adapter_tensors(info: AdapterInfo, allow_pickle: bool) -> dict:
    for key, what in UNSUPPORTED.items():
        if info.peft_config.get(key):
            raise UserError(f"adapter {info.name!r} uses {what} ({key} in adapter_config.json), which lora-merge "
                            "cannot merge as W + scale * B @ A; merge it with PEFT's merge_and_unload instead")
    st = info.folder / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except corrupt_file_errors() as e:
            raise UserError(f"adapter {info.name!r}: {st} is corrupt ({e})") from e
    if not allow_pickle:
        raise UserError(f"adapter {info.name!r}: no adapter_model.safetensors; pickle weights need allow_pickle=true")
    import torch

    path = info.folder / "adapter_model.bin"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except corrupt_file_errors() as e:
        raise UserError(f"adapter {info.name!r}: {path} is corrupt ({e})") from e


def lora_scale(info: AdapterInfo, module: str, r: int) -> float:
    from peft.utils.other import get_pattern_key

    cfg = info.peft_config
    alphas = cfg.get("alpha_pattern") or {}
    alpha = alphas.get(get_pattern_key(alphas.keys(), module), cfg.get("lora_alpha", 8))
    return alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def lora_updates(info: AdapterInfo, tensors: dict, ckpt: BaseCheckpoint) -> dict:
    """base weight name -> a function from the float32 base weight to the merged one (lazy: the deltas of a 6B
    model would not fit in memory at once). Every adapted module is checked against the checkpoint first; a
    mismatch names the adapter and the base."""
    pairs: dict[str, dict] = {}
    dora = bool(info.peft_config.get("use_dora"))
    for key, t in tensors.items():
        m = _LORA_KEY.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["ab"]] = t
            continue
        if key.removesuffix(".weight").endswith(MAGNITUDE):
            if not dora:
                raise UserError(f"adapter {info.name!r}: {key} is a DoRA magnitude, but adapter_config.json does "
                                "not set use_dora; the folder is inconsistent")
            pairs.setdefault(key.removeprefix(PREFIX).removesuffix(".weight").removesuffix(MAGNITUDE), {})["m"] = t
            continue
        name = key.removeprefix(PREFIX)
        if "lora_" in name:
            raise UserError(f"adapter {info.name!r}: {key} is a LoRA variant lora-merge does not merge")
        # A trained bias (lora.bias=all) or a fully trained module (modules_to_save): it replaces the base tensor.
        if ckpt.shapes.get(name) != tuple(t.shape):
            raise UserError(f"adapter {info.name!r}: {key} {tuple(t.shape)} has no counterpart in {ckpt.label} "
                            f"({ckpt.shapes.get(name, 'missing')})")
        pairs[name] = {"replace": t}
    transpose = bool(info.peft_config.get("fan_in_fan_out"))
    updates = {}
    for module, ab in pairs.items():
        if "replace" in ab:
            updates[module] = lambda w, t=ab["replace"]: t.float()
            continue
        if set(ab) != ({"A", "B", "m"} if dora else {"A", "B"}):
            raise UserError(f"adapter {info.name!r}: {module} lacks its lora_A, lora_B"
                            f"{' or DoRA magnitude' if dora else ''} weight")
        name = module.removeprefix(PREFIX) + ".weight"
        if name not in ckpt.shapes and name.removeprefix("model.") in ckpt.shapes:
            name = name.removeprefix("model.")
        a, b = ab["A"], ab["B"]
        want = (b.shape[0], a.shape[1])
        want = want[::-1] if transpose else want
        if name not in ckpt.shapes:
            raise UserError(f"adapter {info.name!r} adapts {module}, which {ckpt.label} does not have "
                            f"(the adapter was trained for {info.base_name_or_path or 'another base'})")
        if ckpt.shapes[name] != want:
            raise UserError(f"adapter {info.name!r}: {module} is {want} in the adapter but {ckpt.shapes[name]} in "
                            f"{ckpt.label} (the adapter was trained for {info.base_name_or_path or 'another base'})")
        scale = lora_scale(info, module, a.shape[0])

        def update(w, a=a, b=b, scale=scale, m=ab.get("m")):
            w = w.T if transpose else w  # (out, in) from here on
            w = w + (b.float() @ a.float()) * scale
            if m is not None:  # DoRA: each output row rescaled to its trained magnitude
                w = w * (m.float() / w.norm(dim=1))[:, None]
            return w.T if transpose else w

        updates[name] = update
    return updates


class Dequantizer:
    """The quantization-rounded weights the adapter was trained against, one tensor at a time.

    Loading the whole 4-bit base to read them back would hold the full checkpoint in memory while transformers
    quantizes it; instead each weight transformers would quantize (every Linear but the ones its bitsandbytes
    quantizer skips, such as lm_head) is cast to the dtype training loaded it in and put through bitsandbytes'
    own quantize/dequantize with the training settings. tests/merging/test_merge.py checks this is bit-identical to
    dequantizing the layers of the base loaded as training loads it.
    """

    def __init__(self, names: set[str], quant: QuantConfig, dtype):
        self.names, self.quant, self.dtype = names, quant, dtype

    @classmethod
    def load(cls, ckpt: BaseCheckpoint, model_cfg: ModelConfig, quant: QuantConfig) -> "Dequantizer":
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.quantizers.base import get_keys_to_not_convert

        from lora_train.model import compute_dtype, torch_dtype

        with torch.device("meta"):  # module names and types only, no memory
            skeleton = AutoModelForCausalLM.from_config(ckpt.config, trust_remote_code=model_cfg.trust_remote_code)
        skip = set(get_keys_to_not_convert(skeleton))
        names = {f"{n}.weight" for n, m in skeleton.named_modules()
                 if isinstance(m, torch.nn.Linear) and not any(n == s or n.endswith(f".{s}") for s in skip)}
        dtype = torch_dtype(model_cfg.dtype)
        if dtype == "auto":
            dtype = torch_dtype(compute_dtype(quant))  # as lora_train.model.load_base loads a quantized base
        return cls(names, quant, dtype)

    def has(self, name: str) -> bool:
        return name in self.names

    def weight(self, name: str, tensor):
        import bitsandbytes.functional as F
        import torch

        from lora_train.schemas import QuantMode

        device = "cuda" if torch.cuda.is_available() else "cpu"  # where training quantized it
        if self.quant.mode == QuantMode.int8:  # Int8Params quantizes the weight as loaded, cast to float16
            cb, scb, _ = F.int8_vectorwise_quant(tensor.to(self.dtype).to(device=device, dtype=torch.float16))
            return F.int8_vectorwise_dequant(cb, scb).to(self.dtype).cpu()
        w = tensor.to(device=device, dtype=self.dtype)
        q, state = F.quantize_4bit(w, blocksize=64, compress_statistics=self.quant.double_quant,
                                   quant_type=self.quant.mode.value, quant_storage=torch.uint8)
        return F.dequantize_4bit(q, state).cpu()
