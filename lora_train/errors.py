"""User-facing errors: what was wrong, where, and what to do; printed without a traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A mistake the user can fix (config, data, paths). The console scripts print it and exit with status 2."""


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
