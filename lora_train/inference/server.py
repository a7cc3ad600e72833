"""`lora-serve`: an OpenAI-compatible HTTP server over one base model and many adapters.

    lora-serve adapters_dir=adapters host=127.0.0.1 port=8000

`model` in a request names an adapter (its folder name) or the base (its model name, or `base`). Concurrent requests
share one batch across adapters: by default rows join and leave it at every decoding step
(lora_train.inference.scheduler); `scheduler=static` runs whole batches (lora_train.inference.batching). Every mistake in a request is answered with a 4xx and
OpenAI's error JSON; the worker keeps serving everyone else.
"""


# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at definition time.
import asyncio
import hashlib
import hmac
import json
import logging
import os
import time

import hydra
from omegaconf import DictConfig

from lora_train import console
from lora_train.config import checked_overrides, typed
from lora_train.errors import UserError, missing_extra, reported
from lora_train.inference import admin, cards, lifecycle, playground, prompting
from lora_train.inference.api_errors import ApiError, as_api_error, read_json
from lora_train.inference.batching import Closed, QueueFull, Ticket
from lora_train.inference.generation import GenRequest
from lora_train.inference.metrics import ServeMetrics
from lora_train.inference.registry import MultiAdapterModel, check_name
from lora_train.inference.scheduler import build_batcher
from lora_train.schemas.infer import ServeJob

log = logging.getLogger(__name__)
API_KEY_ENV = "LORA_SERVE_API_KEY"


def create_app(host: MultiAdapterModel, batcher, job: ServeJob, api_key: str | None):
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    from lora_train.inference import openai_api as oa

    app = FastAPI(title="lora-serve")

    def error_json(e: ApiError) -> JSONResponse:
        return JSONResponse(oa.error_body(str(e), e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_json(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = "malformed JSON body" if first.get("type") == "json_invalid" else first.get("msg", "invalid request")
        return error_json(ApiError(400, f"{'.'.join(loc) + ': ' if loc else ''}{msg}", param=".".join(loc) or None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        log.exception("unexpected error")
        return error_json(as_api_error(e))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        # Constant time, and digests of equal length, so neither the key's content nor its length leaks by timing.
        given = hashlib.sha256(got.removeprefix("Bearer ").encode()).digest()
        if not (got.startswith("Bearer ") and hmac.compare_digest(given, expected_key)):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    expected_key = hashlib.sha256(api_key.encode()).digest() if api_key is not None else b""
    metrics = ServeMetrics(host, batcher)

    def model_of(name: str) -> str:
        try:
            check_name(name)
            if not host.is_base(name):
                host.folder_of(name)  # 404 for an unknown adapter, 400 for a name leading outside adapters_dir
        except UserError as e:
            raise as_api_error(e) from None
        return name

    def parse(body_cls, raw: dict):
        try:
            return body_cls.model_validate(raw)
        except ValueError as e:  # pydantic's ValidationError (a ValueError) wraps every validator's: name the field
            errs = getattr(e, "errors", lambda: [])()
            if errs:
                loc = ".".join(str(x) for x in errs[0]["loc"])
                raise ApiError(400, f"{loc}: {errs[0]['msg']}", param=loc) from None
            raise ApiError(400, str(e)) from None

    async def body_json(request: Request) -> dict:
        return await read_json(request, job.max_request_bytes)

    async def run_rows(prompts: list[str], model: str, params, stream: bool, ids: list | None = None):
        """Queue one ticket per row; returns (events queue, requests) once every row passed its checks. `ids`: each
        prompt's token ids when it was rendered piece by piece in the adapter's format (chat), else None."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def post(*event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown): stop generating for this row
                reqs[event[1]].cancelled.set()

        reqs = []
        for i, p in enumerate(prompts):
            r = GenRequest(p, model, params, on_text=(lambda t, i=i: post("text", i, t)) if stream else None,
                           on_token=metrics.on_token(model), ids=list(ids[i]) if ids and ids[i] else None)
            reqs.append(r)

        def submit_all():  # in a worker thread: submitting tokenizes, which must not block the event loop
            for i, r in enumerate(reqs):
                batcher.submit(Ticket(r, on_start=lambda i=i: post("start", i),
                                      on_done=lambda res, err, i=i: post("done", i, res, err)))
        try:
            await run_in_threadpool(submit_all)
        except (QueueFull, Closed, UserError) as e:
            for r in reqs:
                r.cancelled.set()
            raise as_api_error(e) from None
        return events, reqs

    async def next_event(events, deadline, reqs):
        try:
            return await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            for r in reqs:
                r.cancelled.set()
            raise ApiError(503, f"timed out after {job.request_timeout_s:.0f} s waiting for the model",
                           "server_error") from None

    async def respond(body, prompts: list[str], chat: bool, ids: list | None = None):
        model = model_of(body.model)
        try:
            params = body.params(job.default_max_tokens, job.max_tokens_limit)
        except ValueError as e:
            raise ApiError(400, str(e), param="max_tokens") from None
        prompts = [p for p in prompts for _ in range(body.n)]
        ids = [x for x in ids for _ in range(body.n)] if ids else None
        events, reqs = await run_rows(prompts, model, params, body.stream, ids)
        deadline = time.monotonic() + job.request_timeout_s
        rid = oa.new_id("chatcmpl" if chat else "cmpl")
        if not body.stream:
            results = [None] * len(reqs)
            while any(r is None for r in results):
                kind, i, *rest = await next_event(events, deadline, reqs)
                if kind == "done":
                    if rest[1] is not None:
                        for r in reqs:
                            r.cancelled.set()
                        raise as_api_error(rest[1])
                    results[i] = rest[0]
            if chat:
                return oa.chat_response(rid, model, results)
            return oa.completion_response(rid, model, results, prompts if getattr(body, "echo", False) else None)
        # Streaming: wait until every row has passed its checks, so a bad request is still a plain 4xx.
        held, started = [], set()
        while len(started) < len(reqs):
            event = await next_event(events, deadline, reqs)
            kind, i, *rest = event
            if kind == "done" and rest[1] is not None:
                for r in reqs:
                    r.cancelled.set()
                raise as_api_error(rest[1])
            started.add(i)
            held.append(event)

        def chunk(i, text=None, finish=None, first=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return oa.chat_chunk(rid, model, i, delta, finish)
            return oa.completion_chunk(rid, model, i, text or "", finish)

        async def sse():
            try:
                if chat:
                    for i in range(len(reqs)):
                        yield f"data: {json.dumps(chunk(i, first=True))}\n\n"
                pending, done, finished = list(held), set(), []
                while len(done) < len(reqs):
                    kind, i, *rest = pending.pop(0) if pending else await next_event(events, deadline, reqs)
                    if kind == "text":
                        yield f"data: {json.dumps(chunk(i, text=rest[0]))}\n\n"
                    elif kind == "done":
                        done.add(i)
                        res, err = rest
                        if err is not None:
                            e = as_api_error(err)
                            yield f"data: {json.dumps(oa.error_body(str(e), e.type, e.param, e.code))}\n\n"
                        else:
                            finished.append(res)
                            yield f"data: {json.dumps(chunk(i, finish=res.finish_reason))}\n\n"
                if body.stream_options is not None and body.stream_options.include_usage:  # OpenAI's last chunk
                    yield f"data: {json.dumps(oa.usage_chunk(chunk(0), finished))}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # the client went away (or we are done): stop generating for it
                for r in reqs:
                    r.cancelled.set()

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.get("/health")
    async def health():
        state = batcher.health()  # queued, running, kv_tokens, batches, rows, largest_batch, cancelled (docs/serve.md)
        error = state.pop("error", None)  # the worker's last unexpected failure, until a step succeeds
        status = "draining" if getattr(batcher, "_closed", False) else "degraded" if error else "ok"
        return {"status": status, **({"error": error} if error else {}), "base": host.base_name,
                "resident_adapters": host.resident(), **state}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        resident = set(host.resident())
        data = [{"id": host.base_name, "object": "model", "created": 0, "owned_by": "lora-train"}]
        for name in await run_in_threadpool(host.names):
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "lora-train",
                         "parent": host.base_name, "resident": name in resident})
        return {"object": "list", "data": data}

    async def counted(request: Request, answer):
        """Run a generation route, counting its answer by model and status for /metrics."""
        raw = None
        try:
            raw = await body_json(request)
            out = await answer(raw)
        except ApiError as e:
            metrics.count(raw.get("model") if raw else None, e.status)
            raise
        except Exception:
            metrics.count(raw.get("model") if raw else None, 500)
            raise
        metrics.count(raw.get("model"), 200)
        return out

    async def complete_text(raw):
        body = parse(oa.CompletionBody, raw)
        try:
            prompts = body.prompts()
        except ValueError as e:
            raise ApiError(400, str(e), param="prompt") from None
        return await respond(body, prompts, chat=False)

    async def complete_chat(raw):
        body = parse(oa.ChatBody, raw)
        try:
            messages = body.as_messages()
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        model = model_of(body.model)
        try:  # the adapter's own format (its chat template where it trained with one); reads its folder: off the loop
            fmt = await run_in_threadpool(prompting.format_of, host, model, job.format)
        except UserError as e:
            raise as_api_error(e) from None
        try:  # a chat template that refuses these roles: 400 with the template's own message
            prompt, ids = await run_in_threadpool(prompting.render, host, fmt, messages)
        except UserError as e:
            raise ApiError(400, str(e), param="messages") from None
        return await respond(body, [prompt], chat=True, ids=[ids])

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(request: Request):
        return await counted(request, complete_text)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(request: Request):
        return await counted(request, complete_chat)

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def prometheus_metrics():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    async def adapter_name(request: Request) -> str:
        return parse(oa.AdapterName, await body_json(request)).name

    admin.mount(app, host, batcher, authorize, adapter_name)  # /admin/adapters: list, load, unload (409 while busy)
    cards.mount(app, host, authorize, as_api_error)  # GET /v1/adapters/{name} (+ /loss.png): read-only cards
    playground.mount(app, playground.enabled(job.playground, job.host))  # the page at /; CSP on every response
    return app


def run(cfg: DictConfig | ServeJob) -> None:
    """Load the base and adapters, then serve until interrupted."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise missing_extra("lora-serve", "serve", e.name) from e

    job = typed(cfg, ServeJob)
    console.progress_bars(console.wants_progress(job.progress))  # no "Loading weights" bars in a server's log
    if not 0 < job.port < 65536:
        raise UserError(f"port={job.port} is out of range")
    api_key = job.api_key or os.environ.get(API_KEY_ENV) or None
    if job.deploy.backend.value == "ray":  # the same routes as a Ray Serve application (docs/scale.md)
        from lora_train.inference.cluster import deploy

        return deploy.run(job, api_key, create_app)
    host = MultiAdapterModel.from_config(job)
    if job.preload:
        for name in host.names()[: job.max_resident_adapters]:
            try:
                host.load(name)
            except UserError as e:  # one bad folder must not keep the others from being served
                log.warning("not preloaded: %s", e)
    batcher = build_batcher(host, job)
    app = create_app(host, batcher, job, api_key)
    print(f"serving {host.base_name} with adapters {host.names()} on http://{job.host}:{job.port}/v1"
          + (" (API key required)" if api_key else "")
          + (f"; playground at http://{job.host}:{job.port}/" if playground.enabled(job.playground, job.host) else ""),
          flush=True)
    lifecycle.serve(app, batcher, job.host, job.port, job.log_level, job.drain_timeout_s)


@checked_overrides("serve")  # quant.mode=... while quant is null: one line saying to write quant=...
@hydra.main(config_path="pkg://lora_train.conf", config_name="serve", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
