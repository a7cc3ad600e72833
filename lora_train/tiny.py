"""The embedded default model: a tiny GPT-J built locally, deterministically, with no download.

It has GPT-J's architecture (rotary attention, parallel attention/MLP block, q/k/v/out projections with the same
module names), so everything that works on it works on GPT-J-6B. Its tokenizer is a byte-level BPE trained on the
bundled sample data, with GPT-J's EOS token. The result is cached on disk, keyed by a hash of everything that
determines it, so a later run (or another process of the same run) loads it in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

EOS = "<|endoftext|>"  # GPT-J's end-of-text token
PAD = "<|pad|>"  # a pad token distinct from EOS, so padding can never be confused with a trained EOS
BUILDER_VERSION = 1  # bump when the build below changes, so stale caches are not reused


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 1024
    n_positions: int = 2048
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 8
    rotary_dim: int = 16
    seed: int = 0


def cache_root() -> Path:
    """Where built models are kept: $LORA_TRAIN_CACHE, else $XDG_CACHE_HOME/lora_train, else ~/.cache/lora_train."""
    if os.environ.get("LORA_TRAIN_CACHE"):
        return Path(os.environ["LORA_TRAIN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lora_train"


def sample_path() -> Path:
    return Path(__file__).parent / "data" / "files" / "sample.jsonl"


def _corpus() -> list[str]:
    texts = []
    with open(sample_path(), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(f"{row['prompt']}\n{row['response']}")
    return texts


def build_tokenizer(vocab_size: int):
    """A byte-level BPE (like GPT-J's, so any text encodes) trained on the bundled sample."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=EOS, model_max_length=2048)


def build(folder: Path, spec: TinySpec = TinySpec()) -> None:
    """Write a tiny GPT-J (float32 safetensors, config, tokenizer) to `folder`."""
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    tokenizer = build_tokenizer(spec.vocab_size)
    config = GPTJConfig(
        vocab_size=spec.vocab_size, n_positions=spec.n_positions, n_embd=spec.n_embd, n_layer=spec.n_layer,
        n_head=spec.n_head, rotary_dim=spec.rotary_dim, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = GPTJForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _key(spec: TinySpec) -> str:
    h = hashlib.sha256(json.dumps([BUILDER_VERSION, asdict(spec)]).encode())
    h.update(sample_path().read_bytes())
    return h.hexdigest()[:12]


def tiny_gptj_path(spec: TinySpec = TinySpec()) -> Path:
    """The cached tiny GPT-J folder, built on first use.

    Built in a temporary folder and renamed into place, so a half-built model is never picked up and two
    processes building at once (e.g. ranks of one torchrun job) both end with the same complete folder.
    """
    target = cache_root() / f"tiny-gptj-{_key(spec)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(tmp, spec)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; its result is identical
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
