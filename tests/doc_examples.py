"""What tests/test_docs.py checks the documentation with: the shell examples of README.md, CONTRIBUTING.md and
docs/*.md, a way to run one as the shell would, and the anchors and links between those pages."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PROJECT = {"lora-train", "lora-data", "lora-merge", "lora-generate", "lora-serve", "lora-eval"}
TOOLS = {"python", "python3", "pip", "accelerate", "torchrun"}
COMPOUND = re.compile(r"\|\||&&|[|;<>`&]")  # several commands, pipes, redirections: only run as listed in FULL
EXPANSION = re.compile(r"\$")  # $(...), $VAR, $'...': the shell must expand it, so the example runs under bash


@dataclass(frozen=True)
class Example:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the command's first line
    text: str  # the command as a reader types it, continuation lines joined, trailing comment removed

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_of(text: str) -> str | None:
    """The program an example runs (after any VAR=value prefixes), or None when it cannot be split."""
    try:
        words = shlex.split(text)
    except ValueError:
        return None
    words = [w for w in words if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w)] if words else []
    return words[0] if words else None


def shell_examples(paths: list[Path] | None = None) -> list[Example]:
    """Every command of this project or of python/pip/accelerate/torchrun in a ```bash/sh/shell/console block."""
    found = []
    for path in paths or pages():
        if not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        lang, i = None, 0
        while i < len(lines):
            raw = lines[i]
            fence = re.match(r"^\s*```+\s*([\w+-]*)", raw)
            if fence:
                lang = None if lang is not None else (fence.group(1).lower() or "")
                i += 1
                continue
            start = i
            if lang not in SHELL_LANGS:
                i += 1
                continue
            text = raw.strip()
            while text.endswith("\\") and i + 1 < len(lines):  # a command continued on the next line
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            if lang == "console":
                if not text.startswith("$ "):
                    continue  # output shown after a command
                text = text[2:]
            text = strip_comment(text.removeprefix("$ "))
            cmd = command_of(text)
            if text and (cmd is None or cmd in PROJECT or cmd in TOOLS):
                page = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(Example(str(page), start + 1, text))
    return found


def is_cheap(argv: list[str]) -> bool:
    """Already a look at the config or the help, not the work itself."""
    return any(a in ("--cfg", "-c", "--help", "-h", "--info", "--hydra-help") or a == "dry_run=true" for a in argv)


def shell_env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def bash_words(text: str, cwd: Path) -> list[str]:
    """The argv bash would build from `text` (quotes, $'...', $(...), globs), without running the command."""
    if not EXPANSION.search(text) and not re.search(r"[*?\[]", text.replace("'", " ").replace('"', " ")):
        return shlex.split(text)
    proc = subprocess.run(["bash", "-c", f"printf '%s\\0' {text}"], cwd=cwd, capture_output=True, text=True,
                          env=shell_env(), timeout=60)
    assert proc.returncode == 0, f"bash cannot expand `{text}`: {proc.stderr}"
    return proc.stdout.split("\0")[:-1]


def run_console(argv: list[str]) -> int:
    """Run a console script in this process through its installed entry point, with `argv` as its command line."""
    from importlib.metadata import entry_points

    from hydra.core.global_hydra import GlobalHydra

    (entry,) = entry_points(group="console_scripts", name=argv[0])
    main = entry.load()
    saved = sys.argv
    GlobalHydra.instance().clear()
    sys.argv = list(argv)
    try:
        main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()


def run_shell(text: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", text], cwd=cwd, capture_output=True, text=True, timeout=900, env=shell_env())


def serve_and_query(argv: list[str], cwd: Path, adapter: str) -> None:
    """Start an example's lora-serve (on a free port instead of its 8000), check `adapter` is listed, complete with
    it, stop the server with SIGTERM (it must exit 0)."""
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


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub makes for the page's headings (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if re.match(r"^\s*```", line):
            fence = not fence
        heading = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            seen[base] = seen.get(base, -1) + 1
            seen.setdefault(f"{base}-{seen[base]}" if seen[base] else base, 0)
    return set(seen)


def broken_links(page: Path) -> list[str]:
    """`file:line: target (why)` for each relative link of the page whose file or #anchor does not exist."""
    problems, fence = [], False
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if re.match(r"^\s*```", line):
            fence = not fence
        if fence:
            continue
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}:{n}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading with that anchor in {dest.name})")
    return problems
