"""lora-serve's errors as HTTP answers (OpenAI's error shape is built from ApiError), and what a request body may
be before any work is spent on it: at most `max_request_bytes` (refused by its Content-Length, or while it is read,
before anything is parsed or tokenized: 413), and JSON that parses (deep nesting included: 400, not a crash)."""

from __future__ import annotations

import json

from lora_train.errors import UserError
from lora_train.inference.batching import AdapterBusy, Closed, QueueFull
from lora_train.inference.registry import UnknownAdapter


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code


def as_api_error(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, UnknownAdapter):
        return ApiError(404, str(e), param="model", code="model_not_found")
    if isinstance(e, (UserError, ValueError)):
        return ApiError(400, str(e))
    if isinstance(e, AdapterBusy):
        return ApiError(409, str(e), param="name", code="adapter_busy")
    if isinstance(e, QueueFull):
        return ApiError(429, str(e), "rate_limit_error", code="queue_full")
    if isinstance(e, (Closed, TimeoutError)):
        return ApiError(503, str(e) or "timed out waiting for the model", "server_error")
    return ApiError(500, f"internal error: {type(e).__name__}", "server_error")


def too_large(size: int | None, max_bytes: int) -> ApiError:
    what = f"the request body ({size} bytes)" if size is not None else "the request body"
    return ApiError(413, f"{what} is larger than max_request_bytes={max_bytes}", code="request_too_large")


# After refusing a body as too large, read and discard up to this much more of it before answering: a client that sends
# its whole body before reading (Python's urllib) then reads the 413 instead of a connection reset. Beyond it the
# server answers and closes at once, so a huge upload cannot hold a worker.
DRAIN_BYTES = 64 << 20


async def _drain(body, budget: int) -> None:
    async for chunk in body:
        budget -= len(chunk)
        if budget <= 0:
            return


async def read_json(request, max_bytes: int) -> dict:
    """The request's body as a JSON object, read no further than `max_bytes` (plus DRAIN_BYTES discarded on refusal)."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > max_bytes:  # refused before a byte is kept
        if int(declared) <= max_bytes + DRAIN_BYTES:
            await _drain(request.stream(), int(declared))
        raise too_large(int(declared), max_bytes)
    # One iterator for reading and draining: a second request.stream() raises "Stream consumed" (a 500) when the
    # chunk that crossed the limit was the body's last.
    body = request.stream()
    chunks, size = [], 0
    async for chunk in body:
        size += len(chunk)
        if size > max_bytes:
            await _drain(body, DRAIN_BYTES)
            raise too_large(None, max_bytes)
        chunks.append(chunk)
    try:
        raw = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed JSON body") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return raw
