"""The continuous-batching engine (lora_train.inference.engine / scheduler) on the tiny 4-bit GPT-J with two trained
adapters whose greedy outputs differ from the base and from each other: the same tokens alone, in a static batch and
joining a running batch mid-way; seeded sampling wherever it runs; chunked prefill that keeps decoding rows moving;
cancellation; the KV budget; fair admission across adapters; adapters evicted while their requests wait."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from serving_helpers import adapters_copy

from lora_train import UserError
from lora_train.inference.batching import QueueFull, Ticket
from lora_train.inference.generate import complete
from lora_train.inference.generation import GenParams, GenRequest, format_prompt, generate
from lora_train.inference.registry import MultiAdapterModel
from lora_train.inference.scheduler import ContinuousBatcher
from lora_train.schemas.infer import GenerateJob, Scheduler, ServeJob

PROMPTS = ["Tell me a joke about cats", "What is the capital of France?", "Write a haiku", "Hi",
           "Explain the theory of relativity in simple words please"]
ADAPTERS = ["alpha", "beta", "base", "alpha", "beta"]
LENGTHS = [24, 5, 9, 12, 16]


@pytest.fixture(scope="module")
def host(tmp_path_factory, model_cache):
    return MultiAdapterModel.from_config(ServeJob(adapters_dir=str(adapters_copy(tmp_path_factory))))


class Waiter:
    """Submits requests to a batcher and collects what each one's callbacks saw."""

    def __init__(self, batcher):
        self.batcher = batcher
        self.results, self.errors, self.order = {}, {}, []
        self.tokens: dict[int, int] = {}
        self.events: dict[int, threading.Event] = {}
        self.lock = threading.Lock()

    def submit(self, key, request: GenRequest) -> GenRequest:
        self.events[key] = threading.Event()
        self.tokens[key] = 0
        outer = request.on_token

        def on_token():
            self.tokens[key] += 1
            if outer:
                outer()

        def on_done(res, err):
            with self.lock:
                self.results[key], self.errors[key] = res, err
                self.order.append(key)
            self.events[key].set()
        request.on_token = on_token
        self.batcher.submit(Ticket(request, on_done=on_done))
        return request

    def wait(self, timeout=300):
        assert all(e.wait(timeout) for e in self.events.values()), "requests did not finish"
        return self


def requests(params=None):
    return [GenRequest(format_prompt(p), a, params or GenParams(max_new_tokens=n))
            for p, a, n in zip(PROMPTS, ADAPTERS, LENGTHS)]


def same(a, b) -> bool:
    return (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)


def test_greedy_tokens_equal_alone_in_a_static_batch_and_joining_midway(host):
    alone = [generate(host, [r])[0] for r in requests()]
    assert len({alone[0].text, alone[1].text, alone[2].text}) == 3  # alpha, beta and the base answer differently
    static = generate(host, requests())
    assert all(same(a, s) for a, s in zip(alone, static))
    for prefill in [512, 3]:  # the prompt read whole, and in chunks of 3 tokens
        batcher = ContinuousBatcher(host, max_batch_size=8, wait_ms=0, max_prefill_tokens=prefill)
        try:
            w = Waiter(batcher)
            reqs = requests()
            w.submit(0, reqs[0])
            while w.tokens[0] < 3:  # the first row is decoding...
                time.sleep(0.005)
            assert not w.events[0].is_set()
            for i in range(1, 5):  # ...when the others (other adapters, the base) join it
                w.submit(i, reqs[i])
            w.wait()
            assert all(same(alone[i], w.results[i]) for i in range(5)), (prefill, [w.results[i] for i in range(5)])
            assert batcher.stats.largest_batch >= 3 and batcher.running() == 0 and batcher.kv_tokens() == 0
        finally:
            batcher.close()


def test_seeded_sampling_gives_the_same_text_wherever_it_runs(host):
    sampled = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    alone = generate(host, [GenRequest(format_prompt("Hi"), "alpha", sampled)])[0].text
    in_static = generate(host, requests()[:2] + [GenRequest(format_prompt("Hi"), "alpha", sampled)])[2].text
    batcher = ContinuousBatcher(host, max_batch_size=8, wait_ms=0)
    try:
        w = Waiter(batcher)
        w.submit("long", GenRequest(format_prompt(PROMPTS[4]), "beta", GenParams(max_new_tokens=30, temperature=1.0)))
        while w.tokens["long"] < 4:
            time.sleep(0.005)
        w.submit("seeded", GenRequest(format_prompt("Hi"), "alpha", sampled))
        w.wait()
    finally:
        batcher.close()
    assert alone == in_static == w.results["seeded"].text
    other = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=8)
    assert generate(host, [GenRequest(format_prompt("Hi"), "alpha", other)])[0].text != alone


def test_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding(host):
    long_prompt = format_prompt(" ".join(["the cat sat on the mat"] * 40))
    n_prompt = len(host.tokenizer(long_prompt, add_special_tokens=False)["input_ids"])
    assert n_prompt > 150
    alone = generate(host, [GenRequest(long_prompt, "beta", GenParams(max_new_tokens=4))])[0]
    seen = {}
    for prefill in [8, 4096]:
        batcher = ContinuousBatcher(host, max_batch_size=4, wait_ms=0, max_prefill_tokens=prefill)
        try:
            w = Waiter(batcher)
            runner = w.submit("runner", GenRequest(format_prompt("Hi"), "base", GenParams(max_new_tokens=300)))
            while w.tokens["runner"] < 2:
                time.sleep(0.005)
            before = w.tokens["runner"]  # the runner's tokens until the long prompt's first token:
            w.submit("long", GenRequest(long_prompt, "beta", GenParams(max_new_tokens=4),
                                        on_token=lambda p=prefill: seen.setdefault(p, w.tokens["runner"] - before)))
            assert w.events["long"].wait(300) and not w.events["runner"].is_set()
            runner.cancelled.set()
            w.wait()
        finally:
            batcher.close()
        assert same(w.results["long"], alone)
    # Read 8 tokens a step, the long prompt took ~n_prompt/8 steps, and the running row got a token at every one;
    # read whole, it joined within a step or two.
    assert seen[8] >= n_prompt // 8 - 2 and seen[4096] <= 2, (seen, n_prompt)


def test_cancelled_row_leaves_at_the_next_step(host):
    batcher = ContinuousBatcher(host, max_batch_size=4, wait_ms=0)
    try:
        w = Waiter(batcher)
        doomed = w.submit("doomed", GenRequest(format_prompt("Hi"), "base", GenParams(max_new_tokens=1000)))
        w.submit("other", GenRequest(format_prompt(PROMPTS[1]), "beta", GenParams(max_new_tokens=12)))
        while w.tokens["doomed"] < 3:
            time.sleep(0.005)
        doomed.cancelled.set()
        at_cancel = w.tokens["doomed"]
        w.wait()
        assert w.results["doomed"].finish_reason == "cancelled" and w.tokens["doomed"] <= at_cancel + 1
        assert same(w.results["other"], generate(host, [GenRequest(format_prompt(PROMPTS[1]), "beta",
                                                                   GenParams(max_new_tokens=12))])[0])
        assert batcher.running() == 0 and batcher.queued() == 0 and batcher.health()["cancelled"] == 1
    finally:
        batcher.close()


def test_kv_budget_bounds_the_batch_and_refuses_what_can_never_fit(host):
    batcher = ContinuousBatcher(host, max_batch_size=8, wait_ms=0, max_batch_tokens=64)
    try:
        with pytest.raises(UserError, match="max_batch_tokens=64"):
            batcher.submit(Ticket(GenRequest(format_prompt("Hi"), "alpha", GenParams(max_new_tokens=80))))
        # Observe the engine after every real step: the cache it holds and the rows in it (kv_tokens counts the
        # padded cache, rows x columns), rather than restating the admission formula.
        seen = []
        engine_step = batcher.engine.step

        def observed_step():
            engine_step()
            seen.append((batcher.engine.kv_tokens(), len(batcher.engine.slots()), batcher.queued()))

        batcher.engine.step = observed_step
        w = Waiter(batcher)
        reqs = [GenRequest(format_prompt(p), "beta", GenParams(max_new_tokens=20)) for p in PROMPTS[:4]]
        for i, r in enumerate(reqs):
            w.submit(i, r)
        w.wait()
        assert seen and max(kv for kv, _, _ in seen) <= 64, seen  # the cache never outgrew the budget...
        assert max(rows for _, rows, _ in seen) < len(reqs), seen  # ...because some rows waited their turn
        assert any(waiting for _, _, waiting in seen), seen
        for i, r in enumerate(reqs):
            alone = generate(host, [GenRequest(r.prompt, "beta", GenParams(max_new_tokens=20))])[0]
            assert same(w.results[i], alone)
    finally:
        batcher.close()


def test_a_flood_for_one_adapter_does_not_starve_another(host):
    batcher = ContinuousBatcher(host, max_batch_size=1, wait_ms=0)
    try:
        w = Waiter(batcher)
        for i in range(12):
            w.submit(f"alpha{i}", GenRequest(format_prompt(PROMPTS[i % 4]), "alpha", GenParams(max_new_tokens=3)))
        w.submit("beta", GenRequest(format_prompt("Hi"), "beta", GenParams(max_new_tokens=3)))
        w.wait()
        assert w.order.index("beta") <= 2, w.order  # round-robin over adapters; in arrival order it would be last
    finally:
        batcher.close()


def test_a_burst_beyond_the_queue_is_refused_and_the_queued_ones_are_served(host):
    batcher = ContinuousBatcher(host, max_batch_size=1, wait_ms=0, max_queue=2)
    try:
        w = Waiter(batcher)
        runner = w.submit("runner", GenRequest(format_prompt("Hi"), "base", GenParams(max_new_tokens=300)))
        while w.tokens["runner"] < 1:
            time.sleep(0.005)
        for i in range(2):
            w.submit(i, GenRequest(format_prompt(PROMPTS[i]), "alpha", GenParams(max_new_tokens=2)))
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            batcher.submit(Ticket(GenRequest(format_prompt("Hi"), "beta", GenParams(max_new_tokens=2))))
        runner.cancelled.set()
        w.wait()
        assert [w.results[i].completion_tokens for i in range(2)] == [2, 2] and batcher.queued() == 0
    finally:
        batcher.close()


def test_adapters_stay_resident_for_their_rows_and_reload_after_eviction(host):
    want = {a: generate(host, [GenRequest(format_prompt(PROMPTS[0]), a, GenParams(max_new_tokens=10))])[0]
            for a in ["alpha", "beta"]}
    host.max_resident = 1  # alpha and beta cannot both be resident: their rows must not share a batch
    evictions = host.evictions
    batcher = ContinuousBatcher(host, max_batch_size=8, wait_ms=0)
    try:
        w = Waiter(batcher)
        for i in range(6):
            w.submit(i, GenRequest(format_prompt(PROMPTS[0]), ["alpha", "beta"][i % 2], GenParams(max_new_tokens=10)))
        host.unload("alpha")  # evicted by an operator while its requests wait
        w.wait()
        for i in range(6):
            assert w.errors[i] is None and same(w.results[i], want[["alpha", "beta"][i % 2]])
        assert host.evictions > evictions
    finally:
        batcher.close()
        host.max_resident = 8


def test_adapter_that_cannot_reload_fails_only_its_own_rows(host):
    want = generate(host, [GenRequest(format_prompt(PROMPTS[0]), "beta", GenParams(max_new_tokens=10))])[0]
    gamma = host.adapters_dir / "gamma"
    shutil.copytree(host.adapters_dir / "alpha", gamma)
    host.load("gamma")
    host.unload("gamma")  # evicted, then its weights are damaged on disk before its requests reload it
    (gamma / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    batcher = ContinuousBatcher(host, max_batch_size=8, wait_ms=0)
    try:
        w = Waiter(batcher)
        for i in range(4):
            w.submit(i, GenRequest(format_prompt(PROMPTS[0]), ["gamma", "beta"][i % 2], GenParams(max_new_tokens=10)))
        w.wait()
        for i in (0, 2):
            assert isinstance(w.errors[i], UserError) and "gamma" in str(w.errors[i])
        for i in (1, 3):
            assert w.errors[i] is None and same(w.results[i], want)
        assert "gamma" not in host.resident()
    finally:
        batcher.close()
        shutil.rmtree(gamma)


def test_bad_requests_are_refused_when_submitted_and_others_still_run(host):
    batcher = ContinuousBatcher(host, max_batch_size=4, wait_ms=0)
    try:
        with pytest.raises(UserError, match="empty"):
            batcher.submit(Ticket(GenRequest("   ", "alpha")))
        with pytest.raises(UserError, match="context"):
            batcher.submit(Ticket(GenRequest("word " * 3000, "alpha", GenParams(max_new_tokens=4))))
        w = Waiter(batcher)
        w.submit("nope", GenRequest(format_prompt("Hi"), "nope", GenParams(max_new_tokens=4)))
        w.submit("ok", GenRequest(format_prompt("Hi"), "alpha", GenParams(max_new_tokens=4)))
        w.wait()
        alone = generate(host, [GenRequest(format_prompt("Hi"), "alpha", GenParams(max_new_tokens=4))])[0]
        assert "does not exist" in str(w.errors["nope"])
        assert w.errors["ok"] is None and same(w.results["ok"], alone)  # untouched by its failed neighbour
    finally:
        batcher.close()


def test_lora_generate_batches_continuously_with_the_same_completions(host):
    prompts = PROMPTS[:3]
    params = GenParams(max_new_tokens=10)
    records = {}
    for scheduler in Scheduler:
        job = GenerateJob(stream=False, batch_size=2, scheduler=scheduler)
        records[scheduler] = complete(host, job, prompts, ["alpha", "beta", "base"], params)
    assert records[Scheduler.continuous] == records[Scheduler.static]
    assert len({r["completion"] for r in records[Scheduler.continuous]}) > 3


def test_adapters_left_after_an_unload_still_serve_mixed_batches(host):
    """PEFT's delete_adapter makes the remaining adapters trainable again; a mixed batch then failed with "a view of a
    leaf Variable that requires grad is being used in an in-place operation" (the Ray replicas' evictions hit it)."""
    rows = [("beta", PROMPTS[0]), ("base", PROMPTS[1])]

    def run():
        return [r.text for r in generate(host, [GenRequest(format_prompt(p), a, GenParams(max_new_tokens=6))
                                                for a, p in rows])]
    host.load("alpha")
    host.load("beta")
    before = run()
    assert host.unload("alpha")
    assert not any(p.requires_grad for p in host.model.parameters())
    assert run() == before


@pytest.mark.parametrize("scheduler", [Scheduler.static, Scheduler.continuous])
def test_an_adapter_is_not_unloaded_under_its_running_rows(host, scheduler):
    from lora_train.inference.batching import AdapterBusy, Batcher

    batcher = Batcher(host, 4, 0) if scheduler == Scheduler.static else ContinuousBatcher(host, 4, 0)
    started, release, done = threading.Event(), threading.Event(), threading.Event()

    def on_token():  # holds the worker inside the row's first token: the row is running until released
        started.set()
        release.wait(60)

    try:
        host.load("alpha")
        batcher.submit(Ticket(GenRequest(format_prompt("Hi"), "alpha", GenParams(max_new_tokens=4), on_token=on_token),
                              on_done=lambda r, e: done.set()))
        assert started.wait(60)
        with pytest.raises(AdapterBusy, match="'alpha' has 1 request"):
            batcher.unload("alpha")
        assert "alpha" in host.resident()
        release.set()
        assert done.wait(60)
        host.load("beta")
        assert batcher.unload("beta") is True  # an adapter without requests unloads at once
        deadline = time.time() + 30
        while True:  # the worker lets go of the finished row right after answering it
            try:
                assert batcher.unload("alpha") is True and "alpha" not in host.resident()
                break
            except AdapterBusy:
                assert time.time() < deadline
                time.sleep(0.05)
    finally:
        release.set()
        batcher.close()
