"""Loss and perplexity of a model on tokenized examples, counted exactly as training counts them: the mean
cross-entropy over the labelled tokens (the response and its EOS; -100 elsewhere), perplexity = exp(loss).

The default data is an adapter's own validation split, rebuilt from the data config and seed saved in its
lora_train.yaml with the same code that split it at training time, so the adapter's loss here reproduces the eval
loss of its training run, and the base and the other adapters are measured on the very same rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lora_train.errors import UserError


@dataclass
class EvalSet:
    name: str  # e.g. "validation of my-run", shown as a column of the loss table
    examples: list[dict]  # {"input_ids": [...], "labels": [...]}
    description: str  # where the rows come from

    @property
    def tokens(self) -> int:
        return sum(sum(1 for v in ex["labels"] if v != -100) for ex in self.examples)


def validation_set(info, tokenizer, max_rows: int | None) -> EvalSet | None:
    """An adapter's validation split as its training run built it; None when it had none."""
    from lora_train.data.build import build_datasets

    job = info.job
    if job is None:
        return None  # an adapter made elsewhere: no saved data config to rebuild from
    _, val, _ = build_datasets(job.data, tokenizer, job.seed)
    if val is None:
        return None
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in val]
    rows = rows[:max_rows] if max_rows else rows
    return EvalSet(f"validation of {info.name}", rows,
                   f"{job.data.source}, validation split (val_fraction {job.data.val_fraction}, seed {job.seed})")


def file_set(source: str, data_cfg, tokenizer, max_rows: int | None) -> EvalSet:
    """Every row of a local file, formatted and tokenized like the training data of `data_cfg`."""
    from dataclasses import replace

    from lora_train.data.build import build_datasets

    rows, _, _ = build_datasets(replace(data_cfg, source=source, val_fraction=0.0, max_rows=max_rows), tokenizer, 0)
    return EvalSet(source, [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows],
                   f"{source}, every row")


def mean_loss(model, evalset: EvalSet, batch_size: int, pad_id: int) -> dict:
    """{"loss", "perplexity", "tokens", "rows"} of `model` (in its current adapter state) on `evalset`."""
    import torch

    if not evalset.examples:
        raise UserError(f"loss: {evalset.name} has no examples")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(evalset.examples), batch_size):
            batch = evalset.examples[start:start + batch_size]
            width = max(len(ex["input_ids"]) for ex in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, ex in enumerate(batch):  # right padding: real tokens never attend to padding
                n = len(ex["input_ids"])
                ids[i, :n] = torch.tensor(ex["input_ids"])
                labels[i, :n] = torch.tensor(ex["labels"])
                mask[i, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shifted = labels[:, 1:].to(device)
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((shifted != -100).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": count, "rows": len(evalset.examples)}
