"""`lora-serve deploy=ray` on this machine: startup to the first answer, and recovery after a replica is killed.

    python benchmarks/cluster.py --adapters adapters --repeats 2

Each repeat starts a private local Ray instance (2 CPUs) with 2 engine replicas of the adapters' base (num_cpus=0, as
in tests/inference/test_cluster.py), times from the call to the first 200 answer through HTTP, then sends one
request every 50 ms (4 adapters/base in turn) while one engine replica is killed with ray.kill. Reported: the time
from ray.kill until Ray Serve's replacement replica answers on /health, the longest request that spanned the kill,
and whether every request in the window got a 200 (goals, issue 23: first answer within 90 s; requests served again
within 10 s of the kill). Ray is shut down after every repeat.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from omegaconf import OmegaConf

from lora_train import compose
from lora_train.inference.cluster import deploy
from lora_train.inference.registry import list_adapter_folders
from lora_train.inference.server import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, path: str, payload=None, timeout: float = 120) -> tuple[int, dict, dict]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)
    except OSError:
        return 0, {}, {}


def one_repeat(adapters: str, models: list[str]) -> dict:
    import ray

    job = OmegaConf.to_object(compose("serve", [
        "deploy=ray", f"adapters_dir={adapters}", f"port={free_port()}", "deploy.replicas=2", "deploy.num_cpus=0",
        "preload=false", "deploy.max_adapters_per_replica=2"]))
    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80_000_000, log_to_driver=False)
    running = None
    try:
        running = deploy.start(job, None, create_app)
        url = running.url
        while call(url, "/v1/completions", {"model": models[0], "prompt": "Hi", "max_tokens": 4})[0] != 200:
            time.sleep(0.2)
        first_answer = time.monotonic() - t0
        for m in models:  # each adapter placed before the kill
            call(url, "/v1/completions", {"model": m, "prompt": "Hi", "max_tokens": 4})
        results: list[tuple[float, float, int]] = []  # (sent, took, status)
        stop = threading.Event()

        def send(i: int) -> None:
            sent = time.monotonic()
            status = call(url, "/v1/completions", {"model": models[i % len(models)], "prompt": f"Question {i}",
                                                   "max_tokens": 8, "temperature": 0})[0]
            results.append((sent, time.monotonic() - sent, status))

        def load() -> None:
            threads, i = [], 0
            while not stop.is_set():
                threads.append(threading.Thread(target=send, args=(i,)))
                threads[-1].start()
                i += 1
                time.sleep(0.05)
            for t in threads:
                t.join()
        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(2)
        victim = call(url, "/v1/completions", {"model": models[0], "prompt": "Hi", "max_tokens": 2})[2][
            "x-lora-replica"]
        killed = time.monotonic()
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{deploy.APP}#{deploy.ENGINE}#{victim}", namespace="serve"))
        replaced = None
        while time.monotonic() - killed < 120:
            replicas = set(call(url, "/health")[1].get("replicas", {}))
            if len(replicas) == 2 and victim not in replicas:
                replaced = time.monotonic() - killed
                break
            time.sleep(0.2)
        time.sleep(2)
        stop.set()
        loader.join()
        spanning = [took for sent, took, _ in results if sent <= killed <= sent + took]
        after = [(sent, took, s) for sent, took, s in results if sent >= killed]
        served_again = min((sent + took - killed for sent, took, s in after if s == 200), default=None)
        return {"first_answer_s": first_answer, "replaced_s": replaced, "served_again_s": served_again,
                "longest_spanning_s": max(spanning, default=0.0), "requests": len(results),
                "ok": sum(s == 200 for _, _, s in results)}
    finally:
        if running is not None:
            running.stop()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", required=True, help="an adapters_dir holding at least two adapters")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    names = [p.name for p in list_adapter_folders(Path(args.adapters))][:3]
    models = names + ["base"]
    rows = [one_repeat(args.adapters, models) for _ in range(args.repeats)]
    for r in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    for key in ("first_answer_s", "replaced_s", "served_again_s", "longest_spanning_s"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            print(f"{key}: median {statistics.median(values):.1f}, range {min(values):.1f}-{max(values):.1f}")


if __name__ == "__main__":
    main()
