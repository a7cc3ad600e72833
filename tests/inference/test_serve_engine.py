"""lora-serve's continuous scheduler over real HTTP on 127.0.0.1: /metrics, request limits (413, deep JSON), the API
key, a property-based fuzz of every route the app registers, a soak with random disconnects, the static scheduler
still selectable, and SIGTERM draining a real `lora-serve` process."""

from __future__ import annotations

import concurrent.futures as cf
import http.client as httpclient
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import need, need_module
from serving_helpers import ThreadServer, adapters_copy, free_port, http, post_json

need_module("fastapi", "serve"), need_module("uvicorn", "serve"), need_module("prometheus_client", "serve")

from lora_train.inference.registry import MultiAdapterModel  # noqa: E402
from lora_train.inference.scheduler import build_batcher  # noqa: E402
from lora_train.inference.server import create_app  # noqa: E402
from lora_train.schemas.infer import Scheduler, ServeJob  # noqa: E402

KEY = "k3y-for-tests"
MODELS = ["alpha", "beta", "gamma", "delta"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_cache):
    adapters = adapters_copy(tmp_path_factory, {"gamma": "alpha", "delta": "beta"})
    job = ServeJob(adapters_dir=str(adapters), max_request_bytes=300_000, max_tokens_limit=64, max_queue=512,
                   batch_wait_ms=2)
    host = MultiAdapterModel.from_config(job)
    batcher = build_batcher(host, job)
    app = create_app(host, batcher, job, KEY)
    server = ThreadServer(app)
    yield {"url": server.url, "host": host, "batcher": batcher, "job": job, "adapters": adapters, "app": app}
    server.stop()
    batcher.close()


def completion(url, model, prompt="Hi\n", n=4, key=KEY, **kw):
    return post_json(url + "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n,
                                               "temperature": 0, **kw}, key)


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}(\{{{re.escape(want)}\}})? (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
    return float(m.groups()[-1]) if m else 0.0


def test_metrics_count_requests_latency_and_state_with_bounded_labels(served):
    url = served["url"]
    assert http(url + "/metrics")[0] == 401  # behind the API key like every other non-health route
    for _ in range(2):
        assert completion(url, "alpha")[0] == 200
    assert completion(url, "tiny-gptj")[0] == 200
    for name in ["nope", "random-name-1", "random-name-2"]:
        assert completion(url, name)[0] == 404
    assert http(url + "/v1/completions", b"{bad", KEY)[0] == 400
    status, raw = http(url + "/metrics", key=KEY)
    text = raw.decode()
    assert status == 200
    assert metric(text, "lora_serve_requests_total", model="alpha", status="200") >= 2
    assert metric(text, "lora_serve_requests_total", model="tiny-gptj", status="200") >= 1
    assert metric(text, "lora_serve_requests_total", model="unknown", status="404") >= 3
    assert metric(text, "lora_serve_requests_total", model="unknown", status="400") >= 1
    assert "random-name" not in text and 'model="nope"' not in text  # unknown names never become series
    assert metric(text, "lora_serve_time_to_first_token_seconds_count", model="alpha") >= 2
    assert metric(text, "lora_serve_inter_token_latency_seconds_count", model="alpha") >= 2 * 3 - 2
    assert metric(text, "lora_serve_generated_tokens_total", model="alpha") >= 2
    assert metric(text, "lora_serve_resident_adapters") == len(served["host"].resident()) >= 1
    assert metric(text, "lora_serve_adapter_loads_total") >= 1
    for gauge in ["lora_serve_queue_length", "lora_serve_running_rows", "lora_serve_kv_tokens",
                  "lora_serve_adapter_evictions_total"]:
        assert re.search(rf"^{gauge} ", text, re.M), gauge


@pytest.mark.parametrize("pieces", [1, 3])
def test_a_body_whose_last_chunk_crosses_the_limit_is_413(pieces):
    """The ASGI server may hand over the chunk that crosses max_request_bytes as the body's last one; reading on to
    drain it must not ask Starlette for the consumed stream a second time (that answered 500)."""
    import asyncio

    from starlette.requests import Request

    from lora_train.inference.api_errors import ApiError, read_json

    body = b'{"prompt": "' + b"z" * 3000 + b'"}'
    size = -(-len(body) // pieces)
    messages = [{"type": "http.request", "body": body[i:i + size], "more_body": i + size < len(body)}
                for i in range(0, len(body), size)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_json(request, 1000))
    assert refused.value.status == 413 and messages == []  # refused, and the rest of the body was read


def test_body_limits_deep_json_and_api_key(served):
    url = served["url"]
    status, body = http(url + "/v1/completions", b'{"model": "alpha", "prompt": "' + b"x" * 400_000 + b'"}', KEY)
    assert status == 413 and b"max_request_bytes=300000" in body
    conn = httpclient.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)  # no Content-Length
    conn.request("POST", "/v1/completions", body=iter([b'{"model": "alpha", "prompt": "'] + [b"y" * 50_000] * 8),
                 headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"}, encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    for deep in [b"[" * 100_000 + b"]" * 100_000, b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"]:
        status, body = http(url + "/v1/completions", deep, KEY)
        assert status == 400 and b"error" in body, body[:200]
    for wrong in [KEY[:-1], KEY + "x", KEY[:-1] + "Y", "", "Bearer"]:
        assert completion(url, "alpha", key=wrong)[0] == 401
    assert http(url + "/v1/completions", json.dumps({"model": "alpha", "prompt": "Hi"}).encode(), key=None,
                headers={"authorization": KEY})[0] == 401  # the key without "Bearer "
    assert completion(url, "alpha")[0] == 200


def test_413_is_read_by_urllib_curl_and_the_openai_client(served, tmp_path):
    """A body far over max_request_bytes (8 MB, more than the sockets buffer): urllib sends all of it before reading,
    curl --data-binary streams a file, the openai client posts JSON; each reads the 413 and its message, never a
    connection reset."""
    import shutil

    url, big = served["url"], b'{"model": "alpha", "prompt": "' + b"z" * 8_000_000 + b'"}'
    status, body = http(url + "/v1/completions", big, KEY)  # urllib: writes the whole body, then reads
    assert status == 413 and b"max_request_bytes=300000" in body, (status, body[:300])
    need(shutil.which("curl") is not None, "curl is not installed")
    (tmp_path / "big.json").write_bytes(big)
    proc = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", f"authorization: Bearer {KEY}",
                           "-H", "content-type: application/json", "--data-binary", f"@{tmp_path / 'big.json'}",
                           url + "/v1/completions"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.endswith("\n413") and "max_request_bytes=300000" in proc.stdout, \
        (proc.returncode, proc.stdout[-300:], proc.stderr[-300:])
    openai = need_module("openai", "dev")
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="alpha", prompt="z" * 8_000_000, max_tokens=1)
    assert caught.value.status_code == 413 and "max_request_bytes=300000" in str(caught.value)


@pytest.mark.slow
def test_fuzz_every_route_never_answers_5xx(served):
    hypothesis = need_module("hypothesis", "dev")
    st = hypothesis.strategies
    from fastapi.routing import APIRoute

    url = served["url"]
    # Every route the app registers (listed from the app, so routes added later are fuzzed too).
    app_routes = sorted({(m, r.path) for r in served["app"].routes if isinstance(r, APIRoute) for m in r.methods})
    assert ("POST", "/v1/completions") in app_routes and ("GET", "/metrics") in app_routes
    scalar = st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats(allow_nan=False) | st.text(max_size=20)
    anything = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=10), inner, max_size=4), max_leaves=12)
    models = st.sampled_from(MODELS + ["base", "tiny-gptj", "nope", "../alpha", ""]) | st.text(max_size=12)
    plausible = st.fixed_dictionaries({"model": models}, optional={
        "prompt": st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=3) | anything,
        "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]),
                                                    "content": st.text(max_size=20) | anything}), max_size=3),
        "max_tokens": st.integers(-2, 4) | anything, "temperature": st.floats(-1, 3) | anything,
        "top_p": st.floats(-1, 2) | anything, "n": st.integers(-1, 3), "stream": st.booleans() | anything,
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5), "seed": st.integers() | anything,
        "name": models | anything, "echo": st.booleans()})
    bodies = (plausible.map(lambda d: json.dumps(d).encode()) | anything.map(lambda d: json.dumps(d).encode())
              | st.binary(max_size=64))
    headers = st.fixed_dictionaries({}, optional={
        "authorization": st.sampled_from([f"Bearer {KEY}", "Bearer wrong", "Basic abc", ""]),
        "content-type": st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x"]),
        "x-custom": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)})
    queries = st.dictionaries(st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=6),
                              st.text(max_size=8), max_size=3)
    seen = []

    @hypothesis.settings(max_examples=200, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(route=st.sampled_from(app_routes), body=bodies, hdrs=headers, query=queries,
                      name=st.text(max_size=12))
    def probe(route, body, hdrs, query, name):
        import urllib.parse

        method, path = route
        path = re.sub(r"\{[^}]+\}", urllib.parse.quote(name, safe="") or "x", path)
        target = url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        hdrs.setdefault("authorization", f"Bearer {KEY}")
        status, raw = http(target, body if method in ("POST", "PUT", "PATCH") else None, key=None, method=method,
                           headers=hdrs, timeout=120)
        seen.append(status)
        assert status < 500, (method, target, body[:200], status, raw[:300])

    probe()
    assert len(seen) >= 200 and any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen)
    assert http(url + "/health")[0] == 200 and completion(url, "beta")[0] == 200  # still serving
    assert served["batcher"].running() == 0


def soak(served, total: int, seed: int = 0):
    """`total` requests over 4 adapters from 16 clients: a mix of plain, streamed, streams dropped after their first
    chunk and streams dropped right after sending. Returns how many finished normally."""
    import psutil

    url, port = served["url"], int(served["url"].rsplit(":", 1)[1])
    rng = random.Random(seed)
    plan = [(rng.choice(MODELS), rng.choice(["plain", "stream", "drop", "cancel"]), rng.randint(1, 4),
             f"Question {rng.randint(0, 50)}\n") for _ in range(total)]

    def one(job):
        model, kind, n, prompt = job
        if kind == "plain":
            status, body = completion(url, model, prompt, n=n)
            return status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")
        conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=120)
        payload = {"model": model, "prompt": prompt, "max_tokens": n if kind == "stream" else 64, "stream": True}
        conn.request("POST", "/v1/completions", json.dumps(payload), {"authorization": f"Bearer {KEY}",
                                                                       "content-type": "application/json"})
        if kind == "cancel":
            conn.close()  # gone before the first token: its row is freed (checked below and in the test after it)
            return True
        resp = conn.getresponse()
        if kind == "drop":
            resp.read1(64)
            conn.close()  # gone mid-stream
            return resp.status == 200
        text = resp.read().decode()
        conn.close()
        return resp.status == 200 and text.rstrip().endswith("data: [DONE]")

    cancelled_before = json.loads(http(url + "/health")[1])["cancelled"]
    proc = psutil.Process()
    with cf.ThreadPoolExecutor(16) as pool:
        warm = list(pool.map(one, plan[:40]))
        time.sleep(1)
        rss_warm = proc.memory_info().rss
        rest = list(pool.map(one, plan[40:]))
    deadline = time.time() + 120
    while True:  # every dropped stream's row is freed, nothing waits
        health = json.loads(http(url + "/health")[1])
        if health["running"] == 0 and health["queued"] == 0:
            break
        assert time.time() < deadline, f"rows leaked: {health}"
        time.sleep(0.2)
    assert health["kv_tokens"] == 0
    # Clients that left early (cancel, drop) stopped their rows: the scheduler counted rows it cut short.
    assert health["cancelled"] > cancelled_before, (health, cancelled_before)
    rss_end = proc.memory_info().rss
    assert rss_end <= rss_warm * 1.10, f"resident memory grew from {rss_warm >> 20} MiB to {rss_end >> 20} MiB"
    assert all(warm + rest), [p for p, ok in zip(plan, warm + rest) if not ok][:5]
    assert completion(url, "alpha")[0] == 200


def test_soak_300_requests_with_disconnects_leaks_nothing(served):
    soak(served, 300)


def test_a_client_gone_before_reading_a_token_frees_its_row(served):
    """A streamed request whose client closes once its row runs, before reading anything: /health shows the row
    cancelled and freed well before the 64 tokens it would otherwise run to (read to the end, it ends with
    "length")."""
    url, port = served["url"], int(served["url"].rsplit(":", 1)[1])
    prompt = "Question 7\n"
    status, body = completion(url, "alpha", prompt, n=64)
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"  # it would run all 64 tokens
    before = json.loads(http(url + "/health")[1])
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"model": "alpha", "prompt": prompt, "max_tokens": 64,
                                                        "temperature": 0, "stream": True, "n": 4}),
                 {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    deadline = time.time() + 60
    while json.loads(http(url + "/health")[1])["running"] == 0:  # admitted: its rows hold cache now
        assert time.time() < deadline, "the request was never admitted"
        time.sleep(0.002)
    conn.close()  # gone without reading a byte
    while True:
        health = json.loads(http(url + "/health")[1])
        if health["running"] == 0 and health["queued"] == 0:
            break
        assert time.time() < deadline, f"the rows were never freed: {health}"
        time.sleep(0.02)
    assert health["cancelled"] == before["cancelled"] + 4 and health["kv_tokens"] == 0, (before, health)
    assert health["batches"] - before["batches"] < 63, (before, health)  # stopped early, not run to the end


@pytest.mark.slow
def test_soak_2000_requests_with_disconnects_leaks_nothing(served):
    soak(served, 2000, seed=1)


def test_static_scheduler_is_still_selectable_with_the_same_answers(served):
    job = ServeJob(adapters_dir=str(served["adapters"]), scheduler=Scheduler.static)
    batcher = build_batcher(served["host"], job)
    server = ThreadServer(create_app(served["host"], batcher, job, KEY))
    try:
        for model in ["alpha", "beta", "tiny-gptj"]:
            prompt = "What is the capital of France?\n"
            static, continuous = completion(server.url, model, prompt, n=8), completion(served["url"], model, prompt,
                                                                                         n=8)
            assert static[0] == continuous[0] == 200
            assert static[1]["choices"][0]["text"] == continuous[1]["choices"][0]["text"]
        health = json.loads(http(server.url + "/health")[1])
        assert health["scheduler"] == "static" and health["rows"] == 3
        assert json.loads(http(served["url"] + "/health")[1])["scheduler"] == "continuous"
    finally:
        server.stop()
        batcher.close()


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_an_unexpected_worker_error_degrades_health_until_a_step_succeeds(served, scheduler):
    """A fault injected into the real worker (one step raises): the request in hand fails with a 5xx, /health says
    degraded with the error, and the next request's successful step makes it ok again."""
    if scheduler == "continuous":
        url, batcher, name = served["url"], served["batcher"], "step"
        target, server = batcher.engine, None
    else:
        job = ServeJob(adapters_dir=str(served["adapters"]), scheduler=Scheduler.static)
        batcher = build_batcher(served["host"], job)
        server = ThreadServer(create_app(served["host"], batcher, job, KEY))
        url, target, name = server.url, batcher, "_run"
    real = getattr(target, name)
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault for the test")
        return real(*args, **kwargs)

    setattr(target, name, fails_once)
    try:
        assert json.loads(http(url + "/health")[1])["status"] == "ok"
        assert completion(url, "alpha")[0] >= 500
        health = json.loads(http(url + "/health")[1])
        assert health["status"] == "degraded" and health["error"] == "RuntimeError: injected fault for the test", health
        assert completion(url, "alpha")[0] == 200
        health = json.loads(http(url + "/health")[1])
        assert health["status"] == "ok" and "error" not in health, health
    finally:
        setattr(target, name, real)
        if server is not None:
            server.stop()
            batcher.close()


@pytest.mark.slow
def test_sigterm_drains_running_rows_refuses_new_ones_and_exits_0(served, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    exe = Path(sys.executable).with_name("lora-serve")
    proc = subprocess.Popen([str(exe), f"adapters_dir={served['adapters']}", f"port={port}", "drain_timeout_s=120"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if http(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.3)
        conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", "/v1/completions", json.dumps({"model": "tiny-gptj", "prompt": "Hi\n", "max_tokens": 300,
                                                            "temperature": 0, "stream": True}),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read1(10)  # the row is generating
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        status, body = completion(url, "alpha", key=None)
        assert status == 503 and "shutting down" in body["error"]["message"]
        rest = resp.read().decode()  # the running row finishes and reaches its client
        assert rest.rstrip().endswith("data: [DONE]") and '"finish_reason": "length"' in rest
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert "draining" in (tmp_path / "server.log").read_text()
