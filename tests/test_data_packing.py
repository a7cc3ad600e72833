"""Packing isolates examples: a packed batch's loss equals the same examples run unpacked, and no example's logits
move when others share its row (sdpa and eager attention, and the 4-bit base the trainer uses)."""

from __future__ import annotations

import pytest
import torch

from lora_train.errors import UserError
from lora_train.model import load_base, load_tokenizer, resolve_model
from lora_train.packing import PackedCollator, collator_for, layout
from lora_train.schema import ModelConfig, QuantConfig, QuantMode
from lora_train.train import check_eos_trained


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model(ModelConfig()), ModelConfig())


def examples(eos: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n, prompt in [(20, 6), (33, 10), (12, 4), (40, 30)]:
        ids = torch.randint(5, 500, (n - 1,), generator=g).tolist() + [eos]
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def test_layout_fills_rows_without_overflow():
    rows = layout([50, 40, 30, 20, 10, 70], 100)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum([50, 40, 30, 20, 10, 70][i] for i in r) <= 100 for r in rows) and len(rows) == 3


@pytest.mark.parametrize("attn,quant", [("sdpa", "none"), ("eager", "none"), ("sdpa", "nf4")])
def test_packed_loss_and_logits_equal_unpacked(tokenizer, attn, quant):
    from transformers import AutoModelForCausalLM

    path = resolve_model(ModelConfig())
    if quant == "none":
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)
    else:
        model = load_base(path, ModelConfig(), QuantConfig(mode=QuantMode.nf4, compute_dtype="float32"))
    model.eval()
    feats = examples(tokenizer.eos_token_id)
    collator = collator_for(model, tokenizer, max_length=128)
    assert collator.additive == (attn == "eager")
    batch = collator(feats)
    assert batch["input_ids"].shape[0] < len(feats)  # really packed: fewer rows than examples
    with torch.no_grad():
        packed = model(**batch)
        total, count, alone = 0.0, 0, []
        for f in feats:
            out = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
            n = sum(1 for v in f["labels"][1:] if v != -100)
            total, count = total + out.loss.item() * n, count + n
            alone.append(out.logits[0])
    assert packed.loss.item() == pytest.approx(total / count, abs=1e-4)
    for i, (row, last) in enumerate(collator.positions(feats)):
        n = len(feats[i]["input_ids"])
        got = packed.logits[row, last - n + 1: last + 1]
        assert (got - alone[i]).abs().max().item() < 1e-3, f"example {i} saw another example"


def test_restarting_position_ids_alone_would_not_isolate(tokenizer):
    """Why the 4D mask: with only per-example position ids, the second example's logits change."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(ModelConfig()), dtype=torch.float32).eval()
    a, b = examples(tokenizer.eos_token_id)[:2]
    ids = torch.tensor([a["input_ids"] + b["input_ids"]])
    pos = torch.tensor([list(range(len(a["input_ids"]))) + list(range(len(b["input_ids"])))])
    with torch.no_grad():
        mixed = model(input_ids=ids, position_ids=pos).logits[0, len(a["input_ids"]):]
        alone = model(input_ids=torch.tensor([b["input_ids"]])).logits[0]
    assert (mixed - alone).abs().max().item() > 1e-2


def test_eos_preflight_works_with_the_packing_collator(tokenizer):
    from datasets import Dataset

    ds = Dataset.from_list(examples(tokenizer.eos_token_id))
    check_eos_trained(PackedCollator(tokenizer.pad_token_id, 128), ds, tokenizer.eos_token_id)

    class MasksPadById(PackedCollator):  # the original GPT4All-J bug, with pad == EOS
        def __call__(self, features):
            batch = super().__call__(features)
            batch["labels"][batch["input_ids"] == tokenizer.eos_token_id] = -100
            return batch

    with pytest.raises(UserError, match="masks the EOS label"):
        check_eos_trained(MasksPadById(tokenizer.eos_token_id, 128), ds, tokenizer.eos_token_id)


def test_flash_attention_is_refused(tokenizer):
    class Cfg:
        _attn_implementation = "flash_attention_2"

    class M:
        config = Cfg()

    with pytest.raises(UserError, match="sdpa or eager"):
        collator_for(M(), tokenizer, 128)
