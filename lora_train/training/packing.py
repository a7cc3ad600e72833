"""Packed batches (train.packing=true, the default): a batch's examples share rows, so a batch is not mostly padding,
while every example still sees only itself.

Two layouts. Where the model dispatches attention through transformers' AttentionInterface (GPT-J and most models in
transformers 5), segments.py lays the batch out as one padding-free row with per-example attention: the cheapest.
Otherwise, this module's rows of up to data.max_length tokens with a block-diagonal mask:

Isolation comes from the attention mask, not from position ids: for GPT-J in transformers 5, position ids that
restart per example do NOT stop attention across examples (measured: the second example's logits moved by 0.3),
while a 4D block-diagonal causal mask (batch x 1 x T x T) isolates them exactly. So the collator builds that mask and
passes per-example position ids too (rotary positions as if each example stood alone). The first label of every
example is masked, as it is unpacked (nothing predicts a sequence's first token), so the loss of a packed batch
equals the loss of the same examples padded (tests/training/test_packing.py proves both).

The batch keeps its examples (the optimizer sees the same examples per step as without packing); only their layout
changes. The mask layout needs sdpa or eager attention (FlashAttention ignores 4D masks, but every FlashAttention
model in transformers 5 takes the padding-free layout instead). One side effect: TRL's logged `num_tokens`
sums the attention mask, which is T x T per row here, so it overstates tokens; metrics.json counts real tokens.
"""

from __future__ import annotations


def layout(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of example indices, first-fit decreasing: each row's total length is at most `capacity` (an example
    longer than capacity gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[r].append(i)
            room[r] -= lengths[i]
    return rows


class PackedCollator:
    """input_ids, labels, position_ids (rows x T) and a block-diagonal causal attention_mask (rows x 1 x T x T)."""

    def __init__(self, pad_id: int, max_length: int, additive_mask: bool = False):
        self.pad_id, self.max_length, self.additive = pad_id, max_length, additive_mask

    def positions(self, features: list[dict]) -> list[tuple[int, int]]:
        """(row, column) of each example's last token in the batch this collator makes of `features`."""
        rows = layout([len(f["input_ids"]) for f in features], self.max_length)
        out: dict[int, tuple[int, int]] = {}
        for r, members in enumerate(rows):
            offset = 0
            for i in members:
                offset += len(features[i]["input_ids"])
                out[i] = (r, offset - 1)
        return [out[i] for i in range(len(features))]

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows = layout([len(f["input_ids"]) for f in features], self.max_length)
        width = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        segment = torch.full((len(rows), width), -1, dtype=torch.long)  # which example a token belongs to
        for r, members in enumerate(rows):
            offset = 0
            for k, i in enumerate(members):
                ids, lab = features[i]["input_ids"], list(features[i]["labels"])
                n = len(ids)
                lab[0] = -100  # the previous example's last token must not be trained to predict this one's first
                input_ids[r, offset:offset + n] = torch.as_tensor(ids)
                labels[r, offset:offset + n] = torch.as_tensor(lab)
                position_ids[r, offset:offset + n] = torch.arange(n)
                segment[r, offset:offset + n] = k
                offset += n
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (segment[:, :, None] == segment[:, None, :]) & causal & (segment >= 0)[:, :, None]
        # A padding query attends to itself only: a fully masked row would make softmax NaN.
        mask |= torch.eye(width, dtype=torch.bool)
        mask = mask[:, None]
        if self.additive:  # eager attention adds the mask to the scores (computed in float32 for GPT-J)
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "attention_mask": mask}


def collator_for(model, tokenizer, max_length: int):
    """The packing collator for this model: one padding-free row with per-example attention where the model's
    attention can take it (lora_train/training/segments.py), else rows of up to max_length with a block-diagonal mask."""
    from lora_train.training.segments import SegmentCollator, use_segment_attention

    if use_segment_attention(model):
        return SegmentCollator()
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    return PackedCollator(tokenizer.pad_token_id, max_length, additive_mask=impl == "eager")


def layout_name(collator, job) -> str:
    """The plan line's words for how a micro-batch is laid out (collator None: not chosen yet, or padded)."""
    from lora_train.training.segments import SegmentCollator

    if isinstance(collator, SegmentCollator):
        return "packed without padding, per-example attention"
    if isinstance(collator, PackedCollator):
        return f"packed into rows of {job.data.max_length} with a block-diagonal mask"
    if job.train.packing:
        return "packed (the layout is chosen once the model is loaded)"
    return "padded" + (", grouped by length" if job.train.group_by_length else "")
