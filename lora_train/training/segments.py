"""Padding-free batches: a micro-batch's examples laid end to end in one row, each attending only to itself.

The default layout of `train.packing=true`. Padding costs twice on a long-tailed length distribution: every linear
layer multiplies pad tokens, and attention over a padded (or packed, block-masked) row costs the square of the row
width, not the sum of the squares of the example lengths. Here the linear layers see exactly the real tokens, and
attention runs per example with a plain causal kernel (`segment_attention`), so both costs are the unpadded ones.

How it plugs in: the collator emits one row plus the example boundaries under transformers' own varlen keys
(`cu_seq_lens_q/k`, `max_length_q/k`) and per-example `position_ids`; models that dispatch attention through
`AttentionInterface` (GPT-J, Llama, Mistral, ... in transformers 5) pass those keys down to the attention function.
FlashAttention consumes them natively; for sdpa/eager models we register `segment_attention` under our own name,
which transformers builds no mask for (it would otherwise be a T x T block-diagonal mask).

The examples per optimizer step, the labels and the loss normalisation are unchanged: only the layout differs, so the
loss equals the padded loss (tests/training/test_packing.py).
"""

from __future__ import annotations

ATTENTION = "lora_train_segments"


def segment_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention within each example of a padding-free row. query/key/value: (1, heads, tokens, head_dim)."""
    import torch
    import torch.nn.functional as F

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        if query.shape[0] != 1:
            # Without boundaries this function cannot tell padding from tokens: refuse rather than attend to pads.
            raise RuntimeError(f"{ATTENTION} attention needs padding-free batches (one row with cu_seq_lens_q); got "
                               f"{query.shape[0]} rows. Use the model's own attention for padded batches.")
        bounds = [0, query.shape[2]]  # one sequence: ordinary causal attention
    else:
        bounds = bounds.tolist()
    gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    # split, not slicing: the backward of a slice writes a zero tensor of the whole row per example; split's backward
    # is one concatenation.
    sizes = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    parts = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling, **gqa)
        for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2)) if q.shape[2]
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def use_segment_attention(model) -> bool:
    """Switch `model` to per-example attention for padding-free batches; False if it cannot take one (then the
    caller falls back to packed rows with a block-diagonal mask). FlashAttention models already read the boundaries."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if "flash" in impl or impl == ATTENTION:
        return True
    can_set = getattr(model, "_can_set_attn_implementation", None)  # transformers' own test for AttentionInterface use
    if can_set is None or not can_set():
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, segment_attention)
    model.set_attn_implementation(ATTENTION)
    return True


class SegmentCollator:
    """One row (1 x total tokens): input_ids, labels, per-example position_ids and the varlen boundaries."""

    def positions(self, features: list[dict]) -> list[tuple[int, int]]:
        """(row, column) of each example's last token in the batch this collator makes of `features`."""
        out, offset = [], 0
        for f in features:
            offset += len(f["input_ids"])
            out.append((0, offset - 1))
        return out

    def __call__(self, features: list[dict]) -> dict:
        import torch

        ids, labels, positions, bounds = [], [], [], [0]
        for f in features:
            n = len(f["input_ids"])
            lab = list(f["labels"])
            lab[0] = -100  # the previous example's last token must not be trained to predict this one's first
            ids += list(f["input_ids"])
            labels += lab
            positions += range(n)
            bounds.append(bounds[-1] + n)
        cu = torch.tensor(bounds, dtype=torch.int32)
        longest = int(cu.diff().max())
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]), "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
                "max_length_q": longest, "max_length_k": longest}
