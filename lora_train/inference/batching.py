"""Dynamic batching: one worker thread takes whatever requests are waiting (across adapters, up to
`max_batch_size`, waiting `wait_ms` after the first for others to join) and generates them in one batch.

Requests are checked one by one before their batch runs (adapter loads, prompt fits), so a bad request fails alone
and never takes its batch-mates down. The queue is bounded: when full, `submit` raises QueueFull and the server
answers 429 instead of letting latency grow without limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from lora_train.errors import UserError
from lora_train.inference.generation import GenRequest, GenResult, generate, max_positions, prepare, prompt_ids

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Too many requests waiting (HTTP 429)."""


class Closed(Exception):
    """The batcher is shutting down (HTTP 503)."""


class AdapterBusy(Exception):
    """An unload refused because requests of that adapter run or wait (HTTP 409)."""

    def __init__(self, name: str, rows: int):
        super().__init__(f"adapter {name!r} has {rows} request(s) running or waiting; unload it once they finish")


@dataclass
class Ticket:
    request: GenRequest
    on_start: Callable[[], None] = lambda: None  # the request passed its checks and its batch is starting
    on_done: Callable[[Optional[GenResult], Optional[BaseException]], None] = lambda r, e: None
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class Stats:
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    cancelled: int = 0  # rows stopped early because their client went away


class Batcher:
    def __init__(self, host, max_batch_size: int = 16, wait_ms: float = 5.0, max_queue: int = 256):
        if max_batch_size < 1 or max_queue < 1 or wait_ms < 0:
            raise UserError(f"max_batch_size={max_batch_size}, max_queue={max_queue} and batch_wait_ms={wait_ms} "
                            "must be positive")
        self.host = host
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000
        self.queue: queue.Queue[Ticket | None] = queue.Queue(maxsize=max_queue)
        self.stats = Stats()
        self._in_hand: list[Ticket] = []  # the batch taken from the queue, until it is answered
        self._running = 0  # rows of the batch being generated
        self._kv = 0  # KV tokens that batch may hold (rows x (longest prompt + largest max_tokens))
        self._closed = False
        self.error: str | None = None  # the last unexpected failure, until a batch succeeds (/health: degraded)
        self._thread = threading.Thread(target=self._loop, name="lora-batcher", daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket) -> None:
        if self._closed:
            raise Closed("the server is shutting down")
        try:  # tokenize in the caller's thread; a bad request is still reported by the worker, alone
            prepare(self.host.tokenizer, ticket.request, max_positions(self.host.base.config))
        except UserError:
            pass
        try:
            self.queue.put_nowait(ticket)
        except queue.Full:
            raise QueueFull(f"{self.queue.maxsize} requests are already waiting; retry later") from None

    def queued(self) -> int:
        return self.queue.qsize()

    def running(self) -> int:
        return self._running

    def kv_tokens(self) -> int:
        return self._kv

    def health(self) -> dict:
        return {"scheduler": "static", "queued": self.queued(), "running": self.running(), "kv_tokens": self._kv,
                "batches": self.stats.batches, "rows": self.stats.rows, "largest_batch": self.stats.largest_batch,
                "cancelled": self.stats.cancelled, "error": self.error}

    def unload(self, name: str) -> bool:
        """Admin unload: AdapterBusy while requests of `name` wait or are in the batch in hand, else the host's."""
        with self.queue.mutex:
            rows = sum(t.request.adapter == name for t in [*self.queue.queue, *self._in_hand] if t is not None)
        if rows:
            raise AdapterBusy(name, rows)
        return self.host.unload(name)

    def close(self, timeout: float = 30) -> bool:
        """Stop taking requests; the batch in hand finishes (within `timeout`), waiting requests get Closed."""
        self._closed = True
        try:
            self.queue.put(None, timeout=timeout)  # wakes the worker; it finishes the batch in hand
        except queue.Full:
            pass
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._closed = True
                    break
                batch.append(item)
            self._in_hand = batch
            try:
                self._run(batch)
                self.error = None
            except BaseException as e:  # fail this batch, keep serving, and say so on /health until one succeeds
                log.exception("batch failed")
                self.error = f"{type(e).__name__}: {e}"
                for t in batch:
                    _finish(t, None, e)
                if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: the rows are answered; stop
                    raise
            finally:
                self._in_hand = []
            if self._closed and self.queue.empty():
                break
        while not self.queue.empty():  # closing: nobody will run what is left
            t = self.queue.get_nowait()
            if t is not None:
                _finish(t, None, Closed("the server is shutting down"))

    def _run(self, batch: list[Ticket]) -> None:
        ready = []
        limit = max_positions(self.host.base.config)
        for t in batch:
            if t.request.cancelled.is_set():
                _finish(t, None, Closed("cancelled"))
                continue
            try:
                t.request.params.check()
                prompt_ids(self.host.tokenizer, t.request, limit)
                if not self.host.is_base(t.request.adapter):
                    self.host.load(t.request.adapter)  # validates it against the base; loads it if needed
            except UserError as e:
                _finish(t, None, e)
                continue
            ready.append(t)
        for group in _fit_resident(ready, self.host):
            for t in group:
                t.on_start()
            self._running = len(group)
            self._kv = len(group) * (max(len(t.request.ids or []) for t in group)
                                     + max(t.request.params.max_new_tokens for t in group))
            try:
                results = generate(self.host, [t.request for t in group])
            finally:
                self._running = self._kv = 0
            self.stats.batches += 1
            self.stats.rows += len(group)
            self.stats.largest_batch = max(self.stats.largest_batch, len(group))
            self.stats.cancelled += sum(r.finish_reason == "cancelled" for r in results)
            for t, r in zip(group, results):
                _finish(t, r, None)


def _fit_resident(tickets: list[Ticket], host) -> list[list[Ticket]]:
    """Split a batch so that no part needs more distinct adapters than may be resident at once."""
    groups: list[list[Ticket]] = []
    names: list[set] = []
    for t in sorted(tickets, key=lambda t: t.request.adapter):
        a = t.request.adapter
        if not groups or (not host.is_base(a) and a not in names[-1] and len(names[-1]) >= host.max_resident):
            groups.append([])
            names.append(set())
        groups[-1].append(t)
        if not host.is_base(a):
            names[-1].add(a)
    return groups


def _finish(t: Ticket, result, error) -> None:
    try:
        t.on_done(result, error)
    except Exception:  # a callback of a request that went away must not stop the worker
        log.exception("request callback failed")
