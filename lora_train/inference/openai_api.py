"""The OpenAI-compatible wire format of `lora-serve`: request bodies (validated by pydantic, strictly typed, so
"max_tokens": "10" is a 400 and not silently coerced), response and stream-chunk builders, and OpenAI's error shape.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from lora_train.inference.generation import GenParams, GenResult


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: StrictBool = False  # one last chunk with no choices and the request's token counts


class _Sampling(BaseModel):
    # Unknown fields (OpenAI clients send some, e.g. user, presence_penalty) are ignored, as OpenAI does.
    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    max_tokens: Optional[StrictInt] = None
    max_completion_tokens: Optional[StrictInt] = None  # the newer name of max_tokens in chat requests
    temperature: Optional[float] = Field(default=None, ge=0, le=2, strict=True)
    top_p: Optional[float] = Field(default=None, gt=0, le=1, strict=True)
    seed: Optional[StrictInt] = None
    stop: Optional[Union[StrictStr, list[StrictStr]]] = None
    stream: StrictBool = False
    n: StrictInt = Field(default=1, ge=1, le=16)
    stream_options: Optional[StreamOptions] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    def params(self, default_max: int, limit: int) -> GenParams:
        """GenParams for this request; max_tokens must be within the server's limit (a 400 otherwise)."""
        max_tokens = self.max_tokens if self.max_tokens is not None else self.max_completion_tokens
        max_tokens = default_max if max_tokens is None else max_tokens
        if not 1 <= max_tokens <= limit:
            raise ValueError(f"max_tokens={max_tokens} is out of range: use 1 to {limit}")
        return GenParams(max_new_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
                         top_p=1.0 if self.top_p is None else self.top_p, seed=self.seed, stop=list(self.stop or []))


class CompletionBody(_Sampling):
    prompt: Union[StrictStr, list[StrictStr]]
    echo: StrictBool = False
    logprobs: Optional[StrictInt] = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError("prompt is empty")
        if self.logprobs is not None:
            raise ValueError("logprobs is not supported")
        return prompts


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[StrictStr, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)

    def as_messages(self) -> list[dict]:
        msgs = [{"role": m.role, "content": m.text()} for m in self.messages]
        if not any(m["content"].strip() for m in msgs):
            raise ValueError("messages hold no text")
        return msgs


class AdapterName(BaseModel):
    name: StrictStr


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(results: list[GenResult]) -> dict:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_response(rid: str, model: str, results: list[GenResult], echo_prompts: list[str] | None) -> dict:
    choices = [{"index": i, "text": (echo_prompts[i] if echo_prompts else "") + r.text, "logprobs": None,
                "finish_reason": r.finish_reason} for i, r in enumerate(results)]
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(results)}


def chat_response(rid: str, model: str, results: list[GenResult]) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                "finish_reason": r.finish_reason} for i, r in enumerate(results)]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(results)}


def usage_chunk(template: dict, results: list[GenResult]) -> dict:
    """The final chunk of a stream with stream_options.include_usage: no choices, the usage of every row."""
    return {**template, "choices": [], "usage": usage(results)}


def completion_chunk(rid: str, model: str, index: int, text: str, finish: str | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}


def chat_chunk(rid: str, model: str, index: int, delta: dict, finish: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
