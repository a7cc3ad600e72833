"""The continuous-batching step loop: rows join and leave a running batch at every decoding step.

Running rows share one padded KV cache (transformers' DynamicCache, rows left-padded to the longest). A step feeds
every row its newest token in ONE forward of the base; PEFT's `adapter_names` gives each row its own adapter inside
the LoRA layers, so the base's matmuls are shared by all rows whatever their adapters. Joining rows are prefilled
apart, in chunks of at most `max_prefill_tokens` (one chunk per step, so the decoding rows keep moving while a long
prompt is read), and their cache is then spliced into the batch. Finished and cancelled rows leave before the next
step, and cache columns that no remaining row needs (left padding) are cut off.

Each row sees only its own real tokens: the attention mask is built per row (4D, boolean) and position ids count
only real tokens, so a row's logits are the ones it would get alone, whatever joins or leaves around it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lora_train.inference.generation import GenRequest, GenResult, RowSampler, _Row

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One request's row: its prompt ids, text tracking, sampler, and the KV it may grow to."""

    request: GenRequest
    row: _Row
    sampler: RowSampler
    on_done: Callable[[Optional[GenResult], Optional[BaseException]], None]
    pending: Optional[int] = None  # the token picked last, not yet in the cache (fed at the next step)
    started: float = field(default_factory=time.monotonic)

    @property
    def adapter(self) -> str:
        return self.request.adapter

    @property
    def reserve(self) -> int:
        """Tokens of KV this row holds at most: its prompt plus every token it may generate."""
        return len(self.request.ids) + self.request.params.max_new_tokens

    def result(self) -> GenResult:
        return GenResult(self.row.text, self.row.finish_reason, len(self.request.ids), len(self.row.ids))


class PaddedBatch:
    """Rows that share one left-padded KV cache; `valid[b, j]` says whether cache column j of row b is a real token."""

    def __init__(self):
        self.slots: list[Slot] = []
        self.cache: Any = None
        self.valid: Any = None  # bool tensor [rows, columns]

    @property
    def columns(self) -> int:
        valid = self.valid  # read once: /health and /metrics ask from other threads while the worker resets it
        return 0 if valid is None else valid.shape[1]

    def tokens(self) -> int:
        """KV tokens this batch holds now, padding included (what its cache costs in memory)."""
        return len(self.slots) * self.columns

    def forward(self, host, tokens, new_valid):
        """Feed `tokens` [rows, q] (real where `new_valid`) to every row; returns the last column's float32 logits."""
        import torch
        from peft import PeftModel
        from transformers import DynamicCache

        past = self.columns
        full = new_valid if self.valid is None else torch.cat([self.valid, new_valid], dim=1)
        kv = full.shape[1]
        cols = torch.arange(kv)
        queries = torch.arange(past, kv)
        causal = cols[None, :] <= queries[:, None]
        mask = (full[:, None, None, :] & causal) | (cols[None, :] == queries[:, None])  # a pad query sees itself
        positions = (full.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]
        if self.cache is None:
            self.cache = DynamicCache(config=host.base.config)
        with host.using([s.adapter for s in self.slots]) as names:
            model = host.model
            device = model.device
            if model.config._attn_implementation != "sdpa":  # eager attention adds the mask to its scores
                dtype = next(model.parameters()).dtype
                mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
            extra = {"adapter_names": names} if isinstance(model, PeftModel) else {}
            out = model(input_ids=tokens.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                        cache=self.cache, use_cache=True, logits_to_keep=1, **extra)
        self.valid = full
        return out.logits[:, -1, :].float()

    def keep(self, keep: list[int], trim: bool = True) -> None:
        """Keep only these rows (by index), then cut leading columns that are padding in every remaining row."""
        import torch

        if len(keep) == len(self.slots):
            return
        self.slots = [self.slots[i] for i in keep]
        if not self.slots:
            self.cache, self.valid = None, None
            return
        if self.valid is None:  # nothing cached yet
            return
        idx = torch.tensor(keep, dtype=torch.long)
        self.valid = self.valid[idx]
        first = int(self.valid.any(dim=0).long().argmax()) if trim else 0  # the first column some row needs
        self.valid = self.valid[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx.to(layer.keys.device), :, first:]
            layer.values = layer.values[idx.to(layer.values.device), :, first:]

    def absorb(self, other: "PaddedBatch") -> None:
        """Append another batch's rows (and their cache), left-padding whichever side is shorter."""
        import torch

        if not self.slots:
            self.slots, self.cache, self.valid = other.slots, other.cache, other.valid
            return
        width = max(self.columns, other.columns)

        def pad(t, n, dim):
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)

        a, b = width - self.columns, width - other.columns
        self.valid = torch.cat([pad(self.valid, a, 1), pad(other.valid, b, 1)], dim=0)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([pad(mine.keys, a, 2), pad(theirs.keys, b, 2)], dim=0)
            mine.values = torch.cat([pad(mine.values, a, 2), pad(theirs.values, b, 2)], dim=0)
        self.slots = self.slots + other.slots


class StepEngine:
    """Running rows and the rows being prefilled; `step()` advances both by one forward each."""

    def __init__(self, host, max_prefill_tokens: int = 512):
        self.host = host
        self.max_prefill_tokens = max_prefill_tokens
        self.running = PaddedBatch()
        self.joining = PaddedBatch()  # rows whose prompts are being read, chunk by chunk
        self._prompt = None  # the joining rows' left-padded prompt ids [rows, length] and which are real
        self._prompt_valid = None
        self._read = 0  # prompt columns of the joining rows already in their cache
        self.cancelled = 0  # rows stopped because their request was cancelled
        self.steps = 0

    # ---- what the scheduler asks -----------------------------------------------------------------------------

    def slots(self) -> list[Slot]:
        return self.running.slots + self.joining.slots

    @property
    def idle(self) -> bool:
        return not self.running.slots and not self.joining.slots

    @property
    def prefilling(self) -> bool:
        return bool(self.joining.slots)

    def kv_tokens(self) -> int:
        prompt = self._prompt  # read once (see PaddedBatch.columns)
        return self.running.tokens() + len(self.joining.slots) * (0 if prompt is None else prompt.shape[1])

    def adapters(self) -> set[str]:
        return {s.adapter for s in self.slots() if not self.host.is_base(s.adapter)}

    # ---- rows in and out -------------------------------------------------------------------------------------

    def join(self, slots: list[Slot]) -> None:
        """Start prefilling these rows (checked and tokenized already); only when no other group is prefilling."""
        import torch

        assert not self.joining.slots
        length = max(len(s.request.ids) for s in slots)
        pad = self.host.tokenizer.pad_token_id or 0
        self._prompt = torch.tensor([[pad] * (length - len(s.request.ids)) + s.request.ids for s in slots])
        self._prompt_valid = torch.tensor([[False] * (length - len(s.request.ids)) + [True] * len(s.request.ids)
                                           for s in slots])
        self.joining.slots = list(slots)

    def fail_all(self, error: BaseException) -> None:
        for s in self.slots():
            _finish(s, None, error)
        self.running, self.joining = PaddedBatch(), PaddedBatch()
        self._prompt = self._prompt_valid = None
        self._read = 0

    def step(self) -> None:
        """One prefill chunk for the joining rows (if any), then one decoding step for the running rows."""
        self._drop_cancelled()
        if self.joining.slots:
            self._prefill_chunk()
        if self.running.slots:
            logits = self.running.forward(self.host, _column([s.pending for s in self.running.slots]),
                                          _true(len(self.running.slots)))
            self._take(self.running, logits)
        self.steps += 1

    def _prefill_chunk(self) -> None:
        rows = len(self.joining.slots)
        width = max(1, self.max_prefill_tokens // rows)
        start = self._read
        end = min(start + width, self._prompt.shape[1])
        logits = self.joining.forward(self.host, self._prompt[:, start:end], self._prompt_valid[:, start:end])
        self._read = end
        if end < self._prompt.shape[1]:
            return
        done, self.joining = self.joining, PaddedBatch()
        self._prompt = self._prompt_valid = None
        self._read = 0
        self._take(done, logits)
        self.running.absorb(done)

    def _take(self, batch: PaddedBatch, logits) -> None:
        """Each row picks its next token; finished rows answer and leave the batch."""
        keep = []
        for i, s in enumerate(batch.slots):
            token = s.sampler.pick(logits[i])
            s.row.push(token)
            if s.row.done:
                if s.row.finish_reason == "cancelled":
                    self.cancelled += 1
                _finish(s, s.result(), None)
            else:
                s.pending = token
                keep.append(i)
        batch.keep(keep)

    def _drop_cancelled(self) -> None:
        import torch

        for batch in (self.running, self.joining):
            keep = [i for i, s in enumerate(batch.slots) if not s.request.cancelled.is_set()]
            if len(keep) == len(batch.slots):
                continue
            for i in sorted(set(range(len(batch.slots))) - set(keep)):
                s = batch.slots[i]
                s.row._finish("cancelled")
                self.cancelled += 1
                _finish(s, s.result(), None)
            if batch is self.joining:  # the prompt columns read so far stay where they are (no trimming)
                idx = torch.tensor(keep, dtype=torch.long)
                self._prompt, self._prompt_valid = (self._prompt[idx], self._prompt_valid[idx]) if keep else (None, None)
                self._read = self._read if keep else 0
                batch.keep(keep, trim=False)
            else:
                batch.keep(keep)


def _column(values: list[int]):
    import torch

    return torch.tensor(values, dtype=torch.long)[:, None]


def _true(rows: int):
    import torch

    return torch.ones(rows, 1, dtype=torch.bool)


def _finish(slot: Slot, result, error) -> None:
    try:
        slot.on_done(result, error)
    except Exception:  # a callback of a request that went away must not stop the worker
        log.exception("request callback failed")
