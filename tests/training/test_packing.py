"""Packing isolates examples: a packed batch's loss equals the same examples run unpacked, and no example's logits
move when others share its row. Both layouts (padding-free segments, mask rows), sdpa and eager attention, and the
4-bit base the trainer uses."""

from __future__ import annotations

import pytest
import torch

from lora_train.errors import UserError
from lora_train.model import load_base, load_tokenizer, resolve_model
from lora_train.schemas import ModelConfig, QuantConfig, QuantMode
from lora_train.training.packing import PackedCollator, collator_for, layout
from lora_train.training.segments import ATTENTION, SegmentCollator
from lora_train.training.train import check_eos_trained


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


@pytest.mark.parametrize("layout_,attn,quant", [("segments", "sdpa", "none"), ("segments", "eager", "none"),
                                                ("segments", "sdpa", "nf4"), ("rows", "sdpa", "none"),
                                                ("rows", "eager", "none"), ("rows", "sdpa", "nf4")])
def test_packed_loss_and_logits_equal_unpacked(tokenizer, layout_, attn, quant):
    from transformers import AutoModelForCausalLM

    path = resolve_model(ModelConfig())
    if quant == "none":
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)
    else:
        model = load_base(path, ModelConfig(), QuantConfig(mode=QuantMode.nf4, compute_dtype="float32"))
    model.eval()
    feats = examples(tokenizer.eos_token_id)
    if layout_ == "segments":  # what the trainer picks for GPT-J
        collator = collator_for(model, tokenizer, max_length=128)
        assert isinstance(collator, SegmentCollator) and model.config._attn_implementation == ATTENTION
    else:
        collator = PackedCollator(tokenizer.pad_token_id, 128, additive_mask=attn == "eager")
    batch = collator(feats)
    assert batch["input_ids"].shape[0] < len(feats)  # really packed: fewer rows than examples
    if layout_ == "segments":
        assert batch["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in feats))  # not one pad token
    with torch.no_grad():
        packed = model(**batch)
        model.set_attn_implementation(attn)  # the reference: each example alone, with the model's own attention
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


def test_segment_attention_refuses_padded_batches():
    """Without example boundaries it cannot tell pad tokens from real ones: it must fail, not attend to pads."""
    from lora_train.training.segments import segment_attention

    q = torch.zeros(2, 4, 8, 16)
    with pytest.raises(RuntimeError, match="padding-free"):
        segment_attention(None, q, q, q, None)


def test_flash_attention_models_take_the_padding_free_layout_as_they_are(tokenizer):
    class Cfg:
        _attn_implementation = "flash_attention_2"  # reads cu_seq_lens_q natively

    class M:
        config = Cfg()

    assert isinstance(collator_for(M(), tokenizer, 128), SegmentCollator)
    assert M.config._attn_implementation == "flash_attention_2"


def test_eos_preflight_works_with_the_segment_collator(tokenizer):
    from datasets import Dataset

    ds = Dataset.from_list(examples(tokenizer.eos_token_id))
    check_eos_trained(SegmentCollator(), ds, tokenizer.eos_token_id)
