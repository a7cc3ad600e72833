"""The embedded models: a tiny GPT-J (the default) and a tiny Llama, built locally, deterministically, with no download.

The tiny GPT-J has GPT-J's architecture (rotary attention, parallel attention/MLP block, q/k/v/out projections with the
same module names), so everything that works on it works on GPT-J-6B. The tiny Llama has what SmolLM2 and most current
models have and GPT-J lacks: grouped-query attention, tied input/output embeddings, a gated MLP, pad id = EOS id and a
ChatML chat template. Both tokenizers are byte-level BPEs trained on the bundled sample data. Each model is cached on
disk (lora_train.model_cache), keyed by a hash of everything that determines it, so a later run (or another process of
the same run) loads it in milliseconds.

Their weights are random: text they generate is noise whatever an adapter learned. The real-model preset
(`model=smollm2_135m`) shows an adapter changing what a model says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_train.model_cache import cache_root, cached_folder

__all__ = ["TinySpec", "TinyLlamaSpec", "build", "build_llama", "cache_root", "sample_path", "tiny_gptj_path",
           "tiny_llama_path"]

EOS = "<|endoftext|>"  # GPT-J's end-of-text token
PAD = "<|pad|>"  # a pad token distinct from EOS, so padding can never be confused with a trained EOS
# The tiny Llama's specials follow SmolLM2's ids: 0 end of text, 1 start of a turn (BOS), 2 end of a turn (EOS and pad).
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILDER_VERSION = 2  # bump when a build below changes, so stale caches are not reused


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 1024
    n_positions: int = 2048
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 8
    rotary_dim: int = 16
    seed: int = 0


@dataclass(frozen=True)
class TinyLlamaSpec:
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2  # grouped-query attention: 4 query heads share each key/value head
    max_position_embeddings: int = 2048
    seed: int = 0


def sample_path() -> Path:
    return Path(__file__).parent / "data" / "files" / "sample.jsonl"


def _corpus() -> list[str]:
    texts = []
    with open(sample_path(), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(f"{row['prompt']}\n{row['response']}")
    return texts


def _bpe(vocab_size: int, specials: list[str]):
    """A byte-level BPE (like GPT-J's and SmolLM2's, so any text encodes) trained on the bundled sample."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def build_tokenizer(vocab_size: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_bpe(vocab_size, [EOS, PAD]), eos_token=EOS, bos_token=EOS,
                                   pad_token=PAD, unk_token=EOS, model_max_length=2048)


def build_chat_tokenizer(vocab_size: int):
    """SmolLM2's token layout: EOS is the end of a turn and doubles as the pad token, with a ChatML template."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(vocab_size, [EOS, IM_START, IM_END]), eos_token=IM_END,
                                  bos_token=IM_START, pad_token=IM_END, unk_token=EOS, model_max_length=2048)
    tok.chat_template = CHATML
    return tok


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


def build_llama(folder: Path, spec: TinyLlamaSpec = TinyLlamaSpec()) -> None:
    """Write a tiny Llama (float32 safetensors, config, tokenizer with a chat template) to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_chat_tokenizer(spec.vocab_size)
    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _key(spec) -> str:
    h = hashlib.sha256(json.dumps([BUILDER_VERSION, type(spec).__name__, asdict(spec)]).encode())
    h.update(sample_path().read_bytes())
    return h.hexdigest()[:12]


def tiny_gptj_path(spec: TinySpec = TinySpec()) -> Path:
    """The cached tiny GPT-J folder, built on first use."""
    return cached_folder(f"tiny-gptj-{_key(spec)}", lambda folder: build(folder, spec))


def tiny_llama_path(spec: TinyLlamaSpec = TinyLlamaSpec()) -> Path:
    """The cached tiny Llama folder, built on first use."""
    return cached_folder(f"tiny-llama-{_key(spec)}", lambda folder: build_llama(folder, spec))
