"""Shared by the serving-engine tests: one pair of trained adapters per test session (copied per module), a real
uvicorn server on 127.0.0.1 in a thread, and a small HTTP client that never raises on an error status."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from inference_helpers import train_two

_TRAINED: dict[str, Path] = {}


def adapters_copy(tmp_path_factory, names: dict[str, str] | None = None) -> Path:
    """A fresh adapters folder holding `alpha` and `beta` (trained once per session by train_two), plus copies of
    them under other names: names={"gamma": "alpha"} adds gamma as a copy of alpha."""
    if "dir" not in _TRAINED:
        root = tmp_path_factory.getbasetemp() / "trained-pair"
        train_two(root / "adapters")
        _TRAINED["dir"] = root / "adapters"
    dest = tmp_path_factory.mktemp("adapters") / "adapters"
    shutil.copytree(_TRAINED["dir"], dest)
    for name, source in (names or {}).items():
        shutil.copytree(dest / source, dest / name)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """An app served by uvicorn on 127.0.0.1 from a thread of this process (a real socket, real HTTP)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def http(url: str, body: bytes | None = None, key: str | None = None, method: str | None = None,
         headers: dict | None = None, timeout: float = 120) -> tuple[int, bytes]:
    """(status, raw body) of one request; error statuses are returned, not raised."""
    h = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {}) | (headers or {})
    req = urllib.request.Request(url, data=body, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_json(url: str, payload, key: str | None = None) -> tuple[int, dict]:
    status, raw = http(url, json.dumps(payload).encode(), key)
    return status, json.loads(raw)


@contextlib.contextmanager
def lora_serve_process(adapters: Path, root: Path, key: str, *args: str):
    """A real `lora-serve` console script on 127.0.0.1 (a free port) serving `adapters`, its log in root/server.log;
    yields (process, url) once /health answers, and stops the server afterwards."""
    port = free_port()
    log = open(root / "server.log", "w")
    exe = Path(sys.executable).with_name("lora-serve")
    proc = subprocess.Popen([str(exe), f"adapters_dir={adapters}", f"port={port}", "batch_wait_ms=20", *args], cwd=root,
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, LORA_SERVE_API_KEY=key))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if http(url + "/health")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.close()
            pytest.fail("lora-serve did not start:\n" + (root / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    try:
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
