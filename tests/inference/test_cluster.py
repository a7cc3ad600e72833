"""`lora-serve deploy=ray`: a real local Ray instance (2 CPUs) with 2 engine replicas of the tiny GPT-J and 3 trained
adapters behind lora-serve's own routes. One instance serves the whole module (Ray takes ~15 s to start); the tests
run in file order and the last ones kill a replica and shut everything down.

Affinity is measured with preload=false and deploy.max_adapters_per_replica=2: a replica holds an adapter only once a
request routed to it loaded it, so "the same replica as before" is Ray's router keeping the adapter where it is.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest
from conftest import need_module
from inference_helpers import foreign_adapter
from omegaconf import OmegaConf
from serving_helpers import ThreadServer, adapters_copy, free_port, http

from lora_train import compose
from lora_train.errors import UserError
from lora_train.inference.server import create_app
from lora_train.schemas.infer import ServeJob

KEY = "cluster-key"
PROMPT = "What is the capital of France?"


def job_of(*overrides: str) -> ServeJob:
    return OmegaConf.to_object(compose("serve", ["deploy=ray", *overrides]))


def post(url: str, payload, key: str | None = KEY, timeout: float = 120) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one POST; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={
        "content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def complete(url: str, model: str, prompt: str = PROMPT, n: int = 6, **kw) -> tuple[int, dict, dict]:
    return post(url + "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, **kw})


def ray_pids() -> set[int]:
    """Processes of a Ray instance (its daemons and its workers) on this machine."""
    found = set()
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["name"] in ("raylet", "gcs_server") or cmd.startswith("ray::") or "/ray/_private/" in cmd \
                    or "/ray/dashboard/" in cmd or "/ray/autoscaler/" in cmd:
                found.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


# ---- bad input: no Ray instance needed ------------------------------------------------------------------------


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    from lora_train.inference.cluster import deploy

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the cluster extra were not installed
    with pytest.raises(UserError, match=r"lora-serve deploy=ray needs the cluster extra \(ray is missing\)"):
        deploy.start(job_of(f"adapters_dir={tmp_path}"), None, create_app)


@pytest.mark.parametrize("override,needle", [
    ("deploy.replicas=two", "deploy.replicas='two' must be a number of replicas"),
    ("deploy.replicas=0", "deploy.replicas='0' must be a number"),
    ("deploy.max_adapters_per_replica=0", "deploy.max_adapters_per_replica=0 must be at least 1"),
    ("deploy.num_cpus=-1", "deploy.num_cpus=-1.0 must be at least 0"),
])
def test_bad_deploy_settings_name_the_key(override, needle, tmp_path):
    need_module("ray", "cluster")
    from lora_train.inference.cluster import deploy

    with pytest.raises(UserError) as e:
        deploy.start(job_of(f"adapters_dir={tmp_path}", override), None, create_app)
    assert needle in str(e.value)


def test_adapters_dir_not_visible_is_refused_before_ray_starts(tmp_path):
    need_module("ray", "cluster")
    import ray

    from lora_train.inference.cluster import deploy

    with pytest.raises(UserError, match="is not visible on .*shared filesystem"):
        deploy.start(job_of(f"adapters_dir={tmp_path / 'nowhere'}"), None, create_app)
    assert not ray.is_initialized()


@pytest.mark.slow
def test_address_auto_without_a_cluster_is_one_line(tmp_path, model_cache):
    need_module("ray", "cluster")
    if ray_pids():
        pytest.skip("a Ray instance runs on this machine: address=auto would join it")
    exe = __import__("pathlib").Path(sys.executable).with_name("lora-serve")
    proc = subprocess.run([str(exe), "deploy=ray", "deploy.address=auto", f"adapters_dir={tmp_path}",
                           "model=tiny_gptj"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "deploy.address=auto: no running Ray cluster" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ---- one local Ray instance, 2 engine replicas ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_cache):
    ray = need_module("ray", "cluster")
    from lora_train.inference.cluster import deploy

    adapters = adapters_copy(tmp_path_factory, {"gamma": "alpha"})
    foreign_adapter(adapters / "foreign")  # a real adapter of another shape: refused when a replica loads it
    before = ray_pids()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80_000_000, log_to_driver=False)
    state = {"adapters": adapters, "before": before, "running": None}

    def stop():
        if state["running"] is not None:
            state["running"].stop()
            state["running"] = None
        if ray.is_initialized():
            ray.shutdown()
    state["stop"] = stop
    try:
        job = job_of(f"adapters_dir={adapters}", f"port={free_port()}", "deploy.replicas=2", "deploy.num_cpus=0",
                     "preload=false", "deploy.max_adapters_per_replica=2", "batch_wait_ms=10", f"api_key={KEY}",
                     "deploy.start_timeout_s=240")
        state["running"] = deploy.start(job, KEY, create_app)
        state["url"], state["job"] = state["running"].url, job
        yield state
    finally:
        stop()
        if ray_pids() - before:  # a test crashed half-way: leave no Ray process behind on a shared machine
            subprocess.run([str(__import__("pathlib").Path(sys.executable).with_name("ray")), "stop", "--force"],
                           capture_output=True, timeout=60)


@pytest.mark.slow
def test_same_adapter_requests_stick_to_the_replica_holding_it(cluster):
    url = cluster["url"]
    holds: dict[str, set[str]] = {}  # replica -> adapters it has served (so holds, up to 2 each)
    first: dict[str, str] = {}
    hits = later = 0
    for i in range(60):
        adapter = ["alpha", "beta", "gamma"][i % 3] if i >= 2 else ["alpha", "beta"][i]
        status, body, headers = complete(url, adapter, n=3)
        assert status == 200, body
        replica = headers["x-lora-replica"]
        if adapter in first:
            later += 1
            hits += adapter in holds.get(replica, set())
        else:
            first[adapter] = replica
        holds.setdefault(replica, set()).add(adapter)
    assert first["alpha"] != first["beta"], first  # a second adapter lands on the other replica
    assert hits / later >= 0.95, (hits, later, holds)
    health = json.loads(http(url + "/health")[1])
    assert len(health["replicas"]) == 2 and all(len(r["resident"]) <= 2 for r in health["replicas"].values())


def _local_server(cluster):
    """The single-process server (server.create_app over a real registry and engine) on the same adapters."""
    from lora_train.inference.registry import MultiAdapterModel
    from lora_train.inference.scheduler import build_batcher
    job = cluster["job"]
    host = MultiAdapterModel.from_config(job)
    batcher = build_batcher(host, job)
    return ThreadServer(create_app(host, batcher, job, KEY)), batcher


BAD = [
    ({"model": "nope", "prompt": "x"}, KEY),
    ({"model": "../alpha", "prompt": "x"}, KEY),
    ({"model": "foreign", "prompt": "x", "max_tokens": 2}, KEY),
    ({"model": "alpha", "prompt": "x", "max_tokens": "3"}, KEY),
    ({"model": "alpha", "prompt": "x", "max_tokens": 10**9}, KEY),
    ({"model": "alpha", "prompt": "   "}, KEY),
    ({"model": "alpha", "prompt": "x", "stream": True, "max_tokens": 0}, KEY),
    ({"model": "nope", "prompt": "x", "stream": True}, KEY),
    ({"model": "alpha", "prompt": "x"}, None),
    ({"model": "alpha", "prompt": "x"}, "wrong"),
]


@pytest.mark.slow
def test_bad_requests_keep_their_status_and_greedy_answers_equal_lora_generate(cluster, tmp_path):
    from lora_train import generate

    url = cluster["url"]
    local, batcher = _local_server(cluster)
    try:
        for body, key in BAD:
            got, want = post(url + "/v1/completions", body, key), post(local.url + "/v1/completions", body, key)
            assert got[0] == want[0] and got[0] in (400, 401, 404), (body, got[:2], want[:2])
            assert got[1]["error"]["message"] == want[1]["error"]["message"], (body, got[1], want[1])
            assert "x-lora-replica" in got[2]
        status, raw = http(url + "/v1/completions", b"{not json", KEY)
        assert (status, json.loads(raw)["error"]["message"]) == (400, "malformed JSON body")
    finally:
        local.stop()
        batcher.close(0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\nTell me a joke about cats\n")
    out = tmp_path / "generated.jsonl"
    generate(compose("generate", [f"adapters_dir={cluster['adapters']}", "adapters=[alpha,beta,base]",
                                  f"prompt_file={prompts}", "format=raw", "stream=false",
                                  "sampling.max_new_tokens=8", f"output={out}"]))
    for rec in map(json.loads, out.read_text().splitlines()):
        status, body, _ = complete(url, rec["adapter"], rec["prompt"], n=8)
        assert status == 200 and body["choices"][0]["text"] == rec["completion"], (rec, body)


@pytest.mark.slow
def test_streaming_through_the_ingress(cluster):
    url = cluster["url"]
    whole = complete(url, "beta", n=10)[1]["choices"][0]["text"]
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(
        {"model": "beta", "prompt": PROMPT, "max_tokens": 10, "temperature": 0, "stream": True}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        replica = r.headers["x-lora-replica"]
        events = [line[6:] for line in r.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 3
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == whole and replica and not replica.startswith("ingress-")


@pytest.mark.slow
def test_admin_health_and_metrics_at_the_ingress(cluster):
    url = cluster["url"]
    status, body, headers = post(url + "/admin/adapters/load", {"name": "gamma"})
    assert status == 200 and body == {"name": "gamma", "resident": True}, body
    assert not headers["x-lora-replica"].startswith("ingress-")
    assert post(url + "/admin/adapters/load", {"name": "nope"})[0] == 404
    assert complete(url, "alpha")[0] == 200
    status, body, _ = post(url + "/admin/adapters/unload", {"name": "alpha"})
    assert status == 200 and body["was_resident"] is True
    health = json.loads(http(url + "/health")[1])  # every replica applied the unload before the answer came
    assert all("alpha" not in r["resident"] for r in health["replicas"].values()), health
    models = json.loads(http(url + "/v1/models", key=KEY)[1])["data"]
    assert {m["id"]: m.get("resident") for m in models}["alpha"] is False
    assert http(url + "/v1/adapters/alpha", key=KEY)[0] == 200  # cards from the shared adapters_dir
    status, raw = http(url + "/metrics", key=KEY)
    text = raw.decode()
    assert status == 200 and 'lora_serve_requests_total{model="alpha",status="200"}' in text
    assert "lora_serve_resident_adapters" in text


@pytest.mark.slow
def test_killing_a_replica_loses_no_request(cluster):
    """200 non-streamed requests, 6 at a time; a replica is killed while they run (and while it streams)."""
    import ray

    url = cluster["url"]
    jobs = [(["alpha", "beta", "gamma", "tiny-gptj"][i % 4], f"Question number {i % 5}") for i in range(200)]
    want = {}
    for j in sorted(set(jobs)):  # greedy: the answers after the kill must be the same
        status, body, _ = complete(url, *j)
        assert status == 200, (j, body)
        want[j] = body["choices"][0]["text"]
    stream_req = urllib.request.Request(url + "/v1/completions", data=json.dumps(
        {"model": "beta", "prompt": PROMPT, "max_tokens": 1000, "temperature": 0, "stream": True}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"})
    stream = urllib.request.urlopen(stream_req, timeout=120)
    victim = stream.headers["x-lora-replica"]
    stream.readline()
    done = []
    killed = threading.Event()

    def one(j):
        result = complete(url, *j)
        done.append(1)
        if len(done) == 30:
            ray.kill(ray.get_actor(f"SERVE_REPLICA::lora-serve#engine#{victim}", namespace="serve"))
            killed.set()
        return result
    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, jobs))
    assert killed.is_set()
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 200, [(s, r[1]) for s, r in zip(statuses, results) if s != 200][:3]
    assert len({r[1]["id"] for r in results}) == 200  # one answer per request, none twice
    assert [r[1]["choices"][0]["text"] for r in results] == [want[j] for j in jobs]
    tail = stream.read().decode()  # the stream that was on the killed replica ends, with an error event
    events = [line[6:] for line in tail.splitlines() if line.startswith("data: ")]
    assert any('"error"' in e and "stopped while serving" in e for e in events), events[-3:]
    stream.close()
    health = json.loads(http(url + "/health")[1])
    assert health["retries"] >= 1
    deadline = time.time() + 120  # Ray Serve replaces the killed replica
    while time.time() < deadline:
        replicas = set(json.loads(http(url + "/health")[1])["replicas"])
        if len(replicas) == 2 and victim not in replicas:
            break
        time.sleep(1)
    assert len(replicas) == 2 and victim not in replicas, replicas
    assert complete(url, "beta")[0] == 200


@pytest.mark.slow
def test_unplaceable_replicas_are_refused_naming_the_key(cluster):
    from lora_train.inference.cluster import deploy

    with pytest.raises(UserError, match=r"deploy.num_gpus asks 1.*the largest machine offers GPU 0"):
        deploy.start(job_of(f"adapters_dir={cluster['adapters']}", "deploy.num_gpus=1"), None, create_app)


@pytest.mark.slow
def test_shutdown_leaves_no_ray_process(cluster):
    cluster["stop"]()
    deadline = time.time() + 60
    while ray_pids() - cluster["before"] and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_pids() - cluster["before"]
