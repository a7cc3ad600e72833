"""The engine deployment of `lora-serve deploy=ray`: per replica, one base, the adapter registry and the
continuous-batching engine of the single-process server (registry.MultiAdapterModel, scheduler.build_batcher),
unchanged.

The adapter is Ray Serve's multiplexed model id: the ingress calls `generate` through a handle with
`multiplexed_model_id=<adapter>`, and Ray's router sends a new adapter to the replica holding the fewest, later
requests for it to the replicas that hold it. `@serve.multiplexed` keeps at most `max_adapters_per_replica`
adapters per replica; the one it evicts is unloaded from the registry. Base requests carry no id and spread over
all replicas. Requests are not batched by Serve (`@serve.batch` would split batches by model id): every request is
one ticket for the engine's own thread, which mixes adapters in one forward.

`generate` streams events back to the ingress: ("start", replica) once the row passed its checks, ("text", piece)
for streamed rows, and ("done", result, error) last, an error being the HTTP status and OpenAI fields it maps to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading
from pathlib import Path

from lora_train.errors import UserError
from lora_train.inference.api_errors import as_api_error
from lora_train.inference.batching import Closed, QueueFull, Ticket
from lora_train.inference.cluster.board import POLL_S
from lora_train.inference.generation import GenParams, GenRequest
from lora_train.inference.metrics import LATENCY_BUCKETS
from lora_train.inference.registry import MultiAdapterModel
from lora_train.inference.scheduler import build_batcher
from lora_train.schemas.infer import ServeJob

log = logging.getLogger(__name__)


def wire_error(e: BaseException) -> dict:
    """An exception as the fields of the ApiError it answers with (plain data: it crosses processes)."""
    a = as_api_error(e)
    return {"status": a.status, "message": str(a), "type_": a.type, "param": a.param, "code": a.code}


def check_visible(job: ServeJob) -> None:
    """adapters_dir must be the same shared folder on every machine: refuse to start a replica that cannot see it."""
    folder = Path(job.adapters_dir)
    if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"adapters_dir={job.adapters_dir!r} is not visible on {socket.gethostname()}: every machine "
                        "of the cluster must see the same adapters folder at that path (a shared filesystem)")


class ReplicaMetrics:
    """Per-adapter counters and latency histograms through ray.serve.metrics (Ray adds the deployment and replica
    tags and exports them with Ray's other metrics, prefixed `ray_`: docs/scale.md)."""

    def __init__(self):
        from ray.serve import metrics

        buckets = list(LATENCY_BUCKETS)
        self.requests = metrics.Counter("lora_serve_replica_requests", "Requests answered by this replica",
                                        tag_keys=("adapter", "status"))
        self.tokens = metrics.Counter("lora_serve_replica_generated_tokens", "Tokens generated",
                                      tag_keys=("adapter",))
        self.ttft = metrics.Histogram("lora_serve_replica_time_to_first_token_seconds",
                                      "From a row's arrival at the replica to its first token", boundaries=buckets,
                                      tag_keys=("adapter",))
        self.latency = metrics.Histogram("lora_serve_replica_request_seconds", "From a row's arrival to its end",
                                         boundaries=buckets, tag_keys=("adapter",))

    def on_token(self, adapter: str, started: float):
        first = [True]

        def tick() -> None:
            if first[0]:
                self.ttft.observe(_now() - started, tags={"adapter": adapter})
                first[0] = False
            self.tokens.inc(tags={"adapter": adapter})
        return tick

    def done(self, adapter: str, started: float, status: int) -> None:
        self.requests.inc(tags={"adapter": adapter, "status": str(status)})
        self.latency.observe(_now() - started, tags={"adapter": adapter})


def _now() -> float:
    import time

    return time.monotonic()


class Resident:
    """What @serve.multiplexed holds for one adapter. Serve calls __del__ when it evicts the adapter (and Python may
    call it again later): the first call unloads it from the registry."""

    def __init__(self, host: MultiAdapterModel, name: str):
        self.host, self.name, self.gone = host, name, False

    def __del__(self):
        if not self.gone:
            self.gone = True
            self.host.unload(self.name)


def engine_class(job: ServeJob, board_name: str, namespace: str):
    """The engine deployment's class; a function, because @serve.multiplexed takes its limit at class creation."""
    import ray
    from ray import serve

    per_replica = job.deploy.max_adapters_per_replica or job.max_resident_adapters

    class Engine:
        def __init__(self):
            check_visible(job)
            self.host = MultiAdapterModel.from_config(job)
            if job.preload:  # into the registry only: Ray's router learns of an adapter when a request loads it
                for name in self.host.names()[:per_replica]:
                    try:
                        self.host.load(name)
                    except UserError as e:
                        log.warning("not preloaded: %s", e)
            self.batcher = build_batcher(self.host, job)
            self.replica = serve.get_replica_context().replica_id.unique_id
            self.metrics = ReplicaMetrics()
            self.board = ray.get_actor(board_name, namespace=namespace)
            self._stop = threading.Event()
            self._sync = threading.Thread(target=self._sync_loop, name="lora-board", daemon=True)
            self._sync.start()

        @serve.multiplexed(max_num_models_per_replica=per_replica)
        async def adapter(self, name: str) -> Resident:
            await asyncio.to_thread(self.host.load, name)
            return Resident(self.host, name)

        async def load_adapter(self, name: str) -> dict:
            """Admin load, routed by Ray like a request for `name`: loads it on the replica Ray picks."""
            try:
                await self.adapter(name)
            except (UserError, ValueError) as e:  # the caller's: unknown, unreadable or mismatched adapter
                return {"replica": self.replica, "error": wire_error(e)}
            except Exception as e:  # a fault here (memory, a bug): its traceback in this replica's log, a 500 back
                log.exception("loading adapter %r", name)
                return {"replica": self.replica, "error": wire_error(e)}
            return {"replica": self.replica, "error": None}

        async def generate(self, payload: dict):
            started = _now()
            name = payload["model"]
            loop = asyncio.get_running_loop()
            events: asyncio.Queue = asyncio.Queue()

            def post(*event):
                loop.call_soon_threadsafe(events.put_nowait, event)

            request = GenRequest(payload["prompt"], name, GenParams(**payload["params"]),
                                 on_text=(lambda t: post("text", t)) if payload["stream"] else None,
                                 on_token=self.metrics.on_token(name, started), ids=payload.get("ids"))
            try:
                if not self.host.is_base(name):
                    await self.adapter(name)  # tells Ray's router this replica holds it
                ticket = Ticket(request, on_start=lambda: post("start"), on_done=lambda r, e: post("done", r, e))
                await asyncio.to_thread(self.batcher.submit, ticket)
            except (QueueFull, Closed, UserError) as e:
                error = wire_error(e)
                self.metrics.done(name, started, error["status"])
                yield ("done", None, error)
                return
            try:
                while True:
                    kind, *rest = await events.get()
                    if kind == "start":
                        yield ("start", self.replica)
                    elif kind == "text":
                        yield ("text", rest[0])
                    else:
                        result, err = rest
                        error = wire_error(err) if err is not None else None
                        self.metrics.done(name, started, error["status"] if error else 200)
                        yield ("done", dataclasses.asdict(result) if result is not None else None, error)
                        return
            finally:  # the ingress went away (client gone, or the request was cancelled): stop generating
                request.cancelled.set()

        def check_health(self) -> None:
            """Ray Serve restarts a replica whose engine thread died."""
            thread = getattr(self.batcher, "_thread", None)
            if thread is not None and not thread.is_alive():
                raise RuntimeError("the engine thread is not running")

        # ---- the board: admin actions from the ingress, this replica's state back ---------------------------

        def _state(self) -> dict:
            b, h = self.batcher, self.host
            return {"resident": h.resident(), "loads": h.loads, "evictions": h.evictions, "queued": b.queued(),
                    "running": b.running(), "kv_tokens": b.kv_tokens()}

        def _sync_loop(self) -> None:
            seen, evicted = 0, []
            while not self._stop.is_set():
                try:
                    report = self.board.report.remote(self.replica, seen, self._state(), evicted)
                    evicted = []
                    for number, action, name in ray.get(report, timeout=10):
                        if self._apply(action, name):
                            evicted.append(number)
                        seen = number
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                    log.debug("board: %s", e)  # the board is gone (shutdown) or slow: try again next time
                except Exception:  # a fault applying an action: logged, and the loop keeps reporting
                    log.exception("board sync")
                self._stop.wait(POLL_S)

        def _apply(self, action: str, name: str) -> bool:
            """Apply one action from the board; True when an unload found the adapter resident here."""
            if action == "scan":
                self.host.scan()
                return False
            elif action == "unload":
                # Serve's multiplex cache must forget it too, or its router keeps sending the adapter here as if
                # resident. Serve keeps that cache under this attribute (ray/serve/api.py, multiplexed()).
                wrapper = getattr(self, "__serve_multiplex_wrapper", None)
                held = wrapper.models.pop(name, None) if wrapper is not None else None
                if held is not None:
                    held.gone = True
                    wrapper._push_multiplexed_replica_info = True
                return self.host.unload(name) or held is not None
            return False

        def __del__(self):
            self._stop.set()
            self.batcher.close(0)

    return Engine
