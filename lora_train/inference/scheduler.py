"""Continuous batching (`scheduler=continuous`): one worker thread runs the StepEngine; between two steps, finished
rows have left and waiting requests join, as far as the limits allow.

Admission, in order, at every step:
- requests wait in one queue per adapter and are taken round-robin over the adapters, so a flood for one adapter
  does not starve the others; a head that does not fit stops admission until it does (so a large request is not
  passed over for ever either);
- rows: at most `max_batch_size` running (prefilling rows count);
- KV: the batch cache is padded to its longest row, so a batch of R rows may hold R x (the largest prompt +
  max_tokens among them) tokens; admission keeps that bound within `max_batch_tokens`. A request that could not fit
  even alone is refused when submitted (HTTP 400);
- adapters: the adapters of the running rows stay resident; a new one joins only if it can be made resident
  without evicting one in use (`max_resident_adapters`);
- a new prefill group starts only when the previous one is in the batch, and holds at most `max_prefill_tokens`
  padded prompt tokens (a single longer prompt is read alone, in chunks of that size).

`submit` checks and tokenizes in the caller's thread (the server calls it from a thread pool), so a huge prompt
never stalls the worker. The queue is bounded (`max_queue`, then QueueFull: HTTP 429).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from lora_train.errors import UserError
from lora_train.inference.batching import AdapterBusy, Closed, QueueFull, Ticket
from lora_train.inference.engine import Slot, StepEngine
from lora_train.inference.generation import RowSampler, _Row, max_positions, prepare

log = logging.getLogger(__name__)


@dataclass
class Stats:
    steps: int = 0  # decoding steps run (each one forward of the running rows)
    rows: int = 0  # requests admitted into the batch
    largest_batch: int = 0  # most rows running at once
    cancelled: int = 0  # rows stopped early because their client went away

    @property
    def batches(self) -> int:  # /health's name, kept from the static scheduler: here one "batch" is one step
        return self.steps


class ContinuousBatcher:
    def __init__(self, host, max_batch_size: int = 16, wait_ms: float = 5.0, max_queue: int = 256,
                 max_batch_tokens: int = 16384, max_prefill_tokens: int = 512):
        for key, value in [("max_batch_size", max_batch_size), ("max_queue", max_queue),
                           ("max_batch_tokens", max_batch_tokens), ("max_prefill_tokens", max_prefill_tokens)]:
            if value < 1:
                raise UserError(f"{key}={value} must be at least 1")
        if wait_ms < 0:
            raise UserError(f"batch_wait_ms={wait_ms} must not be negative")
        self.host = host
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.engine = StepEngine(host, max_prefill_tokens)
        self.stats = Stats()
        self._waiting: OrderedDict[str, deque[Ticket]] = OrderedDict()  # adapter -> its queue, in round-robin order
        self._count = 0
        self._admitting: list[Ticket] = []  # taken from the queues, not yet rows of the engine
        self._cond = threading.Condition()
        self._closed = False
        self.error: str | None = None  # the last unexpected failure, until a step succeeds (/health: degraded)
        self._limit = max_positions(host.base.config)
        self._thread = threading.Thread(target=self._loop, name="lora-continuous-batcher", daemon=True)
        self._thread.start()

    # ---- the server's side -----------------------------------------------------------------------------------

    def submit(self, ticket: Ticket) -> None:
        """Check, tokenize and queue a request. UserError (400) when it can never run; QueueFull; Closed."""
        if self._closed:
            raise Closed("the server is shutting down")
        r = prepare(self.host.tokenizer, ticket.request, self._limit)
        need = len(r.ids) + r.params.max_new_tokens
        if need > self.max_batch_tokens:
            raise UserError(f"prompt ({len(r.ids)} tokens) + max_tokens ({r.params.max_new_tokens}) = {need} tokens "
                            f"can never fit the server's KV budget max_batch_tokens={self.max_batch_tokens}; "
                            "shorten the prompt or lower max_tokens")
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            if self._count >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting; retry later")
            self._waiting.setdefault(r.adapter, deque()).append(ticket)
            self._count += 1
            self._cond.notify()

    def queued(self) -> int:
        return self._count

    def running(self) -> int:
        return len(self.engine.slots())

    def kv_tokens(self) -> int:
        return self.engine.kv_tokens()

    def health(self) -> dict:
        return {"scheduler": "continuous", "queued": self.queued(), "running": self.running(),
                "kv_tokens": self.kv_tokens(), "max_batch_tokens": self.max_batch_tokens,
                "batches": self.stats.steps, "rows": self.stats.rows, "largest_batch": self.stats.largest_batch,
                "cancelled": self.engine.cancelled, "error": self.error}

    def unload(self, name: str) -> bool:
        """Admin unload: AdapterBusy while rows of `name` run or wait, else the host's unload. Checked and done
        under the queue's lock, so no row of it is admitted in between."""
        with self._cond:
            # A row just admitted may be in both lists until the worker's next turn: count each request once.
            admitted = {id(t.request) for t in self._admitting if t.request.adapter == name}
            admitted |= {id(s.request) for s in self.engine.slots() if s.adapter == name}
            rows = len(self._waiting.get(name, ())) + len(admitted)
            if rows:
                raise AdapterBusy(name, rows)
            return self.host.unload(name)

    def close(self, timeout: float = 30) -> bool:
        """Stop taking requests; waiting ones get Closed (503); running rows finish within `timeout` seconds, then
        are cancelled. True when every running row finished in time."""
        with self._cond:
            self._closed = True
            waiting = [t for q in self._waiting.values() for t in q]
            self._waiting.clear()
            self._count = 0
            self._cond.notify_all()
        for t in waiting:
            _answer(t, None, Closed("the server is shutting down"))
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        drained = not self.running()
        for s in self.engine.slots():  # out of time: stop them at the next step
            s.request.cancelled.set()
        self._thread.join(max(1.0, deadline - time.monotonic()))
        return drained

    # ---- the worker --------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._admitting = []  # the last pick is rows of the engine by now, or answered
                while not self._closed and not self._count and self.engine.idle:
                    self._cond.wait()
                if self._closed and self.engine.idle:
                    break
                if self.engine.idle and self.wait_s:  # the first request: give others a moment to join it
                    deadline = time.monotonic() + self.wait_s
                    while self._count < self.max_batch_size and time.monotonic() < deadline:
                        self._cond.wait(deadline - time.monotonic())
                picked = self._admitting = [] if self._closed else self._pick()
            try:
                self._admit(picked)
                if self.engine.idle:
                    continue
                self.engine.step()
                self.stats.steps += 1
                self.stats.largest_batch = max(self.stats.largest_batch, len(self.engine.slots()))
                self.error = None
            except BaseException as e:  # fail the rows in hand, keep serving, and say so on /health until a step works
                log.exception("decoding step failed")
                self.error = f"{type(e).__name__}: {e}"
                self.engine.fail_all(e)
                if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: the rows are answered; stop
                    raise
        self.stats.cancelled = self.engine.cancelled

    def _pick(self) -> list[Ticket]:
        """Waiting tickets that may join now (called with the lock held)."""
        self._drop_cancelled_waiting()
        if self.engine.prefilling:
            return []
        running = self.engine.slots()
        rows = len(running)
        widest = max((s.reserve for s in running), default=0)
        adapters = self.engine.adapters()
        picked: list[Ticket] = []
        longest = 0
        while self._waiting and rows < self.max_batch_size:
            adapter, queue = next(iter(self._waiting.items()))
            t = queue[0]
            need = len(t.request.ids) + t.request.params.max_new_tokens
            if (rows + 1) * max(widest, need) > self.max_batch_tokens:
                break
            new_adapter = not self.host.is_base(adapter) and adapter not in adapters
            if new_adapter and len(adapters) + 1 > self.host.max_resident:
                break
            if picked and (len(picked) + 1) * max(longest, len(t.request.ids)) > self.engine.max_prefill_tokens:
                break
            queue.popleft()
            self._count -= 1
            self._waiting.move_to_end(adapter)  # round-robin: this adapter goes to the back of the line
            if not queue:
                del self._waiting[adapter]
            picked.append(t)
            rows += 1
            widest = max(widest, need)
            longest = max(longest, len(t.request.ids))
            if new_adapter:
                adapters.add(adapter)
        return picked

    def _drop_cancelled_waiting(self) -> None:
        for adapter in list(self._waiting):
            queue = self._waiting[adapter]
            gone = [t for t in queue if t.request.cancelled.is_set()]
            for t in gone:
                queue.remove(t)
                self._count -= 1
                _answer(t, None, Closed("cancelled"))
            if not queue:
                del self._waiting[adapter]

    def _admit(self, tickets: list[Ticket]) -> None:
        """Make each new row's adapter resident (never evicting one in use), then start prefilling them."""
        slots = []
        in_use = self.engine.adapters()
        for t in tickets:
            r = t.request
            try:
                if not self.host.is_base(r.adapter):
                    for name in in_use:  # most recently used: the eviction in load() picks an unused adapter
                        self.host.load(name)
                    self.host.load(r.adapter)
                    in_use.add(r.adapter)
            except Exception as e:  # a load that fails fails this row, not every row already running
                if not isinstance(e, UserError):
                    log.exception("adapter %r could not be loaded", r.adapter)
                _answer(t, None, e)
                continue
            slots.append(Slot(r, _Row(r, self.host.tokenizer, self.host.tokenizer.eos_token_id),
                              RowSampler(r.params, self.host.base.device), t.on_done))
            t.on_start()
        if slots:
            self.stats.rows += len(slots)
            self.engine.join(slots)


def _answer(t: Ticket, result, error) -> None:
    try:
        t.on_done(result, error)
    except Exception:
        log.exception("request callback failed")


def build_batcher(host, job):
    """The scheduler a ServeJob asks for (`scheduler=continuous` or `static`)."""
    from lora_train.inference.batching import Batcher

    if getattr(job.scheduler, "value", job.scheduler) == "static":
        return Batcher(host, job.max_batch_size, job.batch_wait_ms, job.max_queue)
    return ContinuousBatcher(host, job.max_batch_size, job.batch_wait_ms, job.max_queue, job.max_batch_tokens,
                             job.max_prefill_tokens)


def generate_all(host, requests: list, max_rows: int, max_batch_tokens: int, max_prefill_tokens: int) -> list:
    """Every request through one continuous batch of at most `max_rows` rows (lora-generate's stream=false);
    results in the order of `requests`. A bad request raises its UserError before anything is generated."""
    from lora_train.inference.generation import GenResult

    results: list = [None] * len(requests)
    errors: list = []
    done = threading.Semaphore(0)
    batcher = ContinuousBatcher(host, max_rows, 0, max(1, len(requests)), max_batch_tokens, max_prefill_tokens)
    try:
        for r in requests:  # all checked first: nothing runs when one of them is bad
            prepare(host.tokenizer, r, max_positions(host.base.config))
        for i, r in enumerate(requests):
            def on_done(res: GenResult | None, err, i=i):
                results[i] = res
                if err is not None:
                    errors.append(err)
                done.release()
            batcher.submit(Ticket(r, on_done=on_done))
        for _ in requests:
            done.acquire()
    finally:
        batcher.close(timeout=0)
    if errors:
        raise errors[0]
    return results
