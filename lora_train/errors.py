"""User-facing errors: what was wrong, where, and what to do; printed without a traceback."""

from __future__ import annotations

import functools
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix (config, data, paths). The console scripts print it and exit with status 2."""


def install_hint(extra: str) -> str:
    """The pip command that installs one of the project's extras, as this installation needs it.

    A source checkout (pyproject.toml beside the package) installs editable from its folder; an installed wheel
    names the distribution. Every "this needs an extra" message is built here, so the two never drift apart.
    """
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return f'pip install -e "{root}[{extra}]"' if root != Path.cwd().resolve() else f'pip install -e ".[{extra}]"'
    return f'pip install "lora-train[{extra}]"'


def missing_extra(what: str, extra: str, module: str | None = None) -> UserError:
    """A UserError for a feature whose optional dependencies are not installed: `what` needs `extra`."""
    missing = f" ({module} is missing)" if module else ""
    return UserError(f"{what} needs the {extra} extra{missing}: {install_hint(extra)}")


def hub_errors() -> tuple[type[BaseException], ...]:
    """What fetching from the Hugging Face Hub raises for reasons a user can fix (offline, an unknown repo, revision or
    file, no access, a network failure): OSError covers huggingface_hub's HTTP and not-found errors and requests'
    connection errors; HFValidationError (a malformed repo id) is a ValueError. Anything else is a bug, not a user
    error, and keeps its traceback."""
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, ValueError, HfHubHTTPError)


def corrupt_file_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or foreign safetensors / PyTorch pickle file raises: the safetensors parser's error,
    the unpickler's, a truncated stream, and torch's RuntimeError for an archive it cannot read."""
    import pickle

    from safetensors import SafetensorError

    return (SafetensorError, pickle.UnpicklingError, EOFError, OSError, ValueError, RuntimeError)


class Stopped(Exception):
    """Work stopped on request and can be resumed (e.g. a preemption signal); exits with `exit_code`, no traceback."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def reported(fn):
    """Wrap a command's entry point so that a UserError becomes one clear line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except Stopped as e:
            print(str(e), file=sys.stderr)
            sys.exit(e.exit_code)

    return wrapper
