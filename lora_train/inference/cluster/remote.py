"""The ingress's stand-ins for the engine and the adapter registry, so lora-serve's own routes (server.create_app)
run unchanged in front of remote engine replicas.

`RemoteEngine` takes the scheduler's place: `submit(ticket)` sends the row to an engine replica through a Ray Serve
handle (the adapter as multiplexed model id) and replays the replica's events on the ticket, so the routes answer
400/404/429 with the statuses of the single-process server. When the replica dies mid-request, a non-streamed row
(or a stream that has sent nothing yet) is sent once more, to another replica; a stream that already sent text ends
with an error event. `RemoteHost` takes the registry's place: names, folders and cards come from the shared
adapters_dir (AdapterCatalog), what is resident from the replicas' reports on the board, and admin load/unload go
to the replicas.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import threading
import time

from lora_train.errors import UserError
from lora_train.inference.api_errors import ApiError
from lora_train.inference.batching import Closed
from lora_train.inference.cluster.board import POLL_S
from lora_train.inference.generation import GenResult
from lora_train.inference.registry import AdapterCatalog

log = logging.getLogger(__name__)

# The replicas that served the current HTTP request: a list the x-lora-replica middleware (ingress.py) puts in the
# request's context and reads back when the response starts; submit() appends to it from the threadpool.
SERVED_BY: contextvars.ContextVar[list | None] = contextvars.ContextVar("served_by", default=None)


def _replica_lost(e: BaseException) -> bool:
    """The replica died or became unreachable (not an error of the request itself)."""
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
    from ray.serve.exceptions import ReplicaUnavailableError

    return isinstance(e, (RayActorError, WorkerCrashedError, NodeDiedError, ReplicaUnavailableError))


class RemoteEngine:
    def __init__(self, handle, board, scheduler: str):
        self.handle, self.board, self.scheduler = handle, board, scheduler
        self.snapshot: dict = {"replicas": {}, "latest": 0}
        self.retries = 0  # rows sent again after their replica died
        self.is_base = lambda name: False  # RemoteHost sets its own: base rows carry no multiplexed id
        self.active = 0  # rows sent and not answered yet
        self._closed = False
        self._stop = threading.Event()
        # The handle's calls run on a loop of our own: submit() is called from the server's threadpool.
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="lora-remote", daemon=True).start()
        threading.Thread(target=self._refresh, name="lora-board-read", daemon=True).start()

    # ---- what the routes call (the scheduler's interface) -----------------------------------------------------

    def submit(self, ticket) -> None:
        if self._closed:
            raise Closed("the server is shutting down")
        self.active += 1
        asyncio.run_coroutine_threadsafe(self._drive(ticket, SERVED_BY.get()), self.loop)

    def queued(self) -> int:
        return self._sum("queued")

    def running(self) -> int:
        return self._sum("running")

    def kv_tokens(self) -> int:
        return self._sum("kv_tokens")

    def health(self) -> dict:
        replicas = {r: {k: s[k] for k in ("resident", "queued", "running", "kv_tokens")}
                    for r, s in sorted(self.snapshot["replicas"].items())}
        return {"scheduler": self.scheduler, "queued": self.queued(), "running": self.running(),
                "kv_tokens": self.kv_tokens(), "in_flight": self.active, "retries": self.retries,
                "replicas": replicas}

    def close(self, timeout: float = 30) -> bool:
        self._closed = True
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        return not self.active

    # ---- one row, on a replica --------------------------------------------------------------------------------

    async def _drive(self, ticket, served_by: list | None) -> None:
        r = ticket.request
        payload = {"prompt": r.prompt, "model": r.adapter, "params": dataclasses.asdict(r.params),
                   "stream": r.on_text is not None, "ids": r.ids}
        handle = self.handle.options(stream=True)
        if not self.is_base(r.adapter):
            handle = self.handle.options(stream=True, multiplexed_model_id=r.adapter)
        started, streamed, replica = False, False, "?"
        try:
            for attempt in (1, 2):
                response = handle.generate.remote(payload)
                watch = asyncio.ensure_future(self._watch(r, response))
                try:
                    async for kind, *rest in response:
                        if kind == "start":
                            replica = rest[0]
                            if served_by is not None and replica not in served_by:
                                served_by.append(replica)
                            if not started:
                                started = True
                                ticket.on_start()
                        elif kind == "text":
                            streamed = True
                            r.on_text(rest[0])
                        else:
                            result, error = rest
                            ticket.on_done(GenResult(**result) if result else None,
                                           ApiError(**error) if error else None)
                            return
                except Exception as e:
                    if r.cancelled.is_set():
                        ticket.on_done(GenResult("", "cancelled", 0, 0), None)
                        return
                    if not _replica_lost(e):
                        log.exception("engine replica failed")
                        ticket.on_done(None, ApiError(500, f"internal error: {type(e).__name__}", "server_error"))
                        return
                    if streamed or attempt == 2:
                        ticket.on_done(None, ApiError(503, f"engine replica {replica} stopped while serving this "
                                                           "request; send it again", "server_error"))
                        return
                    self.retries += 1
                    log.warning("engine replica %s lost (%s): sending the row to another replica",
                                replica, type(e).__name__)
                finally:
                    watch.cancel()
        finally:
            self.active -= 1

    async def _watch(self, request, response) -> None:
        """Cancel the remote row when the client goes away (the routes set `cancelled`)."""
        while not request.cancelled.is_set():
            await asyncio.sleep(0.1)
        response.cancel()

    # ---- the replicas' reports --------------------------------------------------------------------------------

    def _refresh(self) -> None:
        import ray

        while not self._stop.is_set():
            try:
                self.snapshot = ray.get(self.board.snapshot.remote(), timeout=10)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                log.debug("board: %s", e)  # the board is gone (shutdown) or slow: the last snapshot stays
            self._stop.wait(POLL_S)

    def _sum(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.snapshot["replicas"].values())


class RemoteHost(AdapterCatalog):
    """The registry as the ingress sees it. Names resolve on the shared adapters_dir, exactly as on a replica."""

    def __init__(self, job, base_name: str, engine: RemoteEngine, tokenizer_of=None):
        super().__init__(base_name, job.adapters_dir, job.allow_pickle)
        self.engine, self.timeout_s = engine, job.deploy.start_timeout_s
        self._tokenizer_of = tokenizer_of  # loads the base's tokenizer (not its weights), if a route needs it
        self._tokenizer = None
        engine.is_base = self.is_base
        for p in job.adapter_paths:
            self.register_path(p)
        self.scan()

    @property
    def tokenizer(self):
        if self._tokenizer is None and self._tokenizer_of is not None:
            self._tokenizer = self._tokenizer_of()
        return self._tokenizer

    def resident(self) -> list[str]:
        """Adapters resident on at least one live replica."""
        return sorted({n for s in self.engine.snapshot["replicas"].values() for n in s["resident"]})

    @property
    def loads(self) -> int:
        return self.engine._sum("loads")

    @property
    def evictions(self) -> int:
        return self.engine._sum("evictions")

    def load(self, name: str):
        """Admin load: every replica rescans adapters_dir, and the replica Ray's router picks loads `name`."""
        import ray

        self.folder_of(name)  # 404 / 400 here, before any replica is asked
        ray.get(self.engine.board.post.remote("scan", name), timeout=10)
        handle = self.engine.handle.options(multiplexed_model_id=name)
        answer = handle.load_adapter.remote(name).result(timeout_s=self.timeout_s)
        served_by = SERVED_BY.get()
        if served_by is not None:
            served_by.append(answer["replica"])
        if answer["error"] is not None:
            raise UserError(answer["error"]["message"])
        return answer

    def unload(self, name: str) -> bool:
        """Admin unload: evicted on every replica; returns once every live replica applied it (10 s at most)."""
        import ray

        number = ray.get(self.engine.board.post.remote("unload", name), timeout=10)
        deadline = time.monotonic() + 10
        snap = self.engine.snapshot
        while time.monotonic() < deadline:
            snap = ray.get(self.engine.board.snapshot.remote(), timeout=10)
            # a replica reports `seen` together with its state after applying and the unloads that evicted
            if all(s["seen"] >= number for s in snap["replicas"].values()):
                self.engine.snapshot = snap
                break
            time.sleep(POLL_S / 3)
        return number in snap.get("evicted", ())
