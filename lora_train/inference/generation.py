"""Generation on a MultiAdapterModel: one `transformers.generate` call for a batch whose rows may each use a
different adapter (PEFT's `adapter_names`), with per-row sampling parameters, stop strings and streaming.

transformers applies one GenerationConfig to a whole batch, but requests in a server batch each bring their own
temperature, top_p, seed, max_tokens and stop strings. Two generate hooks make that per row:
- `_PerRowSampler` (a LogitsProcessor) samples each sampled row with its own temperature, top_p and seeded
  generator and hands generate a one-hot score, so generate's greedy pick takes exactly that token; greedy rows are
  left untouched, so a greedy row gives the same tokens alone or in any batch.
- `_RowTracker` (a StoppingCriteria, which sees every new token of every row) decodes incrementally, cuts at stop
  strings, counts each row's own max_tokens, notices cancelled requests and streams text deltas to callbacks.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from lora_train.errors import UserError
from lora_train.schemas.infer import PromptFormat

SEPARATOR = "\n"  # between prompt and response, as lora-train formats training examples


def format_prompt(text: str, fmt: PromptFormat | str = PromptFormat.gpt4all) -> str:
    """The GPT4All-J format is prompt + "\\n" (the response follows), exactly as in training; raw is the text.
    An adapter's own format needs its template and the tokenizer: lora_train.inference.prompting."""
    fmt = PromptFormat(fmt)
    if fmt == PromptFormat.adapter:
        raise ValueError("format=adapter depends on the adapter: use lora_train.inference.prompting.user_prompt")
    return text + SEPARATOR if fmt == PromptFormat.gpt4all else text


@dataclass
class GenParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)

    def check(self) -> None:
        for key, ok in [("max_new_tokens", self.max_new_tokens >= 1), ("temperature", 0 <= self.temperature <= 100),
                        ("top_p", 0 < self.top_p <= 1), ("stop", all(isinstance(s, str) and s for s in self.stop))]:
            if not ok:
                raise UserError(f"{key}={getattr(self, key)!r} is out of range")


@dataclass
class GenRequest:
    prompt: str  # already formatted (see format_prompt, and lora_train.inference.prompting for adapter formats)
    adapter: str  # adapter name, or the base's name / "base" for no adapter
    params: GenParams = field(default_factory=GenParams)
    on_text: Optional[Callable[[str], None]] = None  # called with each new piece of text, from the generating thread
    cancelled: threading.Event = field(default_factory=threading.Event)  # set it to stop this row early
    on_token: Optional[Callable[[], None]] = None  # called once per generated token (EOS included), for metrics
    # The prompt's token ids: given by the caller when the prompt was rendered piece by piece as in training
    # (lora_train.inference.prompting), else tokenized from `prompt` by prepare(), off the worker.
    ids: Optional[list[int]] = None


@dataclass
class GenResult:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_new_tokens), "cancelled"
    prompt_tokens: int
    completion_tokens: int


def prompt_ids(tokenizer, request: GenRequest, max_positions: int | None) -> list[int]:
    """The prompt's token ids, checked: not empty, and room left for max_new_tokens."""
    ids = request.ids
    if ids is None:
        if not request.prompt.strip():
            raise UserError("the prompt is empty")
        ids = tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError("the prompt is empty")
    if max_positions and len(ids) + request.params.max_new_tokens > max_positions:
        raise UserError(f"prompt ({len(ids)} tokens) + max_tokens ({request.params.max_new_tokens}) exceeds the "
                        f"model's context of {max_positions} tokens; shorten the prompt or lower max_tokens")
    return ids


def prepare(tokenizer, request: GenRequest, limit: int | None) -> GenRequest:
    """Check the request and tokenize its prompt once, in the caller's thread (never the generating worker's)."""
    request.params.check()
    request.ids = prompt_ids(tokenizer, request, limit)
    return request


def max_positions(config) -> int | None:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


class _Row:
    """One row's incremental text: emits only text that can no longer turn into a stop string or a broken
    multi-byte character.

    Decoding is incremental: each token decodes a short window of ids, never the whole completion. The window starts a
    few tokens back (`prefix`) and the text of ids[prefix:read] is subtracted from that of ids[prefix:], so a
    tokenizer that drops the leading space of a decode, or merges bytes across tokens, gives the same text as one
    decode of every id. While the newest tokens end inside a multi-byte character (the decode ends in U+FFFD), the
    window grows and nothing is added until the character is complete."""

    def __init__(self, request: GenRequest, tokenizer, eos_id: int):
        self.request, self.tokenizer, self.eos_id = request, tokenizer, eos_id
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of self.text already handed to on_text
        self.prefix = self.read = 0  # ids[prefix:read]: the decode window's context; ids[read:]: not in self.text yet
        self.finish_reason: str | None = None
        self._longest_stop = max((len(x) for x in request.params.stop), default=0)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _extend(self, final: bool) -> None:
        """Add the text of ids[read:] to self.text; unless `final`, only once it ends on a whole character."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)

    def push(self, token: int) -> None:
        if self.done:
            return
        if self.request.cancelled.is_set():
            return self._finish("cancelled")
        if self.request.on_token is not None:
            self.request.on_token()
        if token == self.eos_id:
            return self._finish("stop")
        self.ids.append(token)
        start = len(self.text)
        self._extend(final=False)
        stops = self.request.params.stop
        # Only the new text, and the stop-string length before it, can hold a stop string that was not there before.
        window = max(0, start - self._longest_stop + 1)
        hits = [i for i in (self.text.find(s, window) for s in stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._finish("stop", flush=False)
        if len(self.ids) >= self.request.params.max_new_tokens:
            return self._finish("length")
        safe = len(self.text)
        for s in stops:  # hold back a tail that may be the start of a stop string
            for k in range(min(len(s) - 1, safe), 0, -1):
                if self.text.endswith(s[:k]):
                    safe -= k
                    break
        self._emit(safe)

    def _emit(self, upto: int) -> None:
        if upto > self.sent and self.request.on_text is not None:
            self.request.on_text(self.text[self.sent:upto])
        self.sent = max(self.sent, upto)

    def _finish(self, reason: str, flush: bool = True) -> None:
        if flush:  # a character still incomplete at the end is decoded as it is (U+FFFD), as a full decode would
            self._extend(final=True)
        self.finish_reason = reason
        self._emit(len(self.text))


class _RowTracker:
    """StoppingCriteria: feeds each row its newest token; a row is finished when its _Row says so."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last):
            row.push(token)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


class RowSampler:
    """One row's next-token choice: argmax when greedy, else temperature / top-p sampling with the row's own seeded
    generator, so a seeded row draws the same tokens alone, in a static batch or in a continuous one."""

    def __init__(self, params: GenParams, device):
        import torch

        self.params = params
        self.generator = None
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
            self.generator = torch.Generator(device=device).manual_seed(seed)

    def sample(self, scores):
        """A token drawn from one row's float32 scores (only for a sampled row)."""
        import torch

        p = self.params
        probs = torch.softmax(scores.float() / p.temperature, dim=-1)
        if p.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = sorted_probs.cumsum(0) - sorted_probs >= p.top_p  # keep the smallest set reaching top_p
            probs = probs.scatter(0, order[outside], 0.0)
        return torch.multinomial(probs, 1, generator=self.generator)

    def pick(self, scores) -> int:
        return int(scores.argmax()) if self.generator is None else int(self.sample(scores))


class _PerRowSampler:
    """LogitsProcessor: each sampled row's token chosen by its RowSampler, handed to generate as a one-hot score."""

    def __init__(self, params: list[GenParams], device):
        self.samplers = {i: RowSampler(p, device) for i, p in enumerate(params) if p.temperature > 0}

    def __call__(self, input_ids, scores):
        for i, sampler in self.samplers.items():
            token = sampler.sample(scores[i])
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


def generate(host, requests: list[GenRequest]) -> list[GenResult]:
    """Generate for every request in one batch (each with its own adapter); raises UserError on a bad request."""
    import torch
    from peft import PeftModel
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    tok = host.tokenizer
    for r in requests:
        r.params.check()
    limit = max_positions(host.base.config)
    ids = [prompt_ids(tok, r, limit) for r in requests]
    batch = tok.pad({"input_ids": ids}, return_tensors="pt")  # left padding (set by MultiAdapterModel)
    eos = tok.eos_token_id
    rows = [_Row(r, tok, eos) for r in requests]
    config = GenerationConfig(max_new_tokens=max(r.params.max_new_tokens for r in requests), do_sample=False,
                              num_beams=1, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    with host.using([r.adapter for r in requests]) as adapter_names, torch.inference_mode():
        model = host.model
        device = model.device
        extra = {"adapter_names": adapter_names} if isinstance(model, PeftModel) else {}
        model.generate(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList([_PerRowSampler([r.params for r in requests], device)]),
            stopping_criteria=StoppingCriteriaList([_RowTracker(rows)]),
            **extra,
        )
    results = []
    for row, prompt in zip(rows, ids):
        if not row.done:  # generate stopped for its own reason (e.g. EOS criterion first): count it as a stop
            row._finish("stop")
        results.append(GenResult(row.text, row.finish_reason, len(prompt), len(row.ids)))
    return results
