"""Errors are never swallowed: every broad handler (`except Exception`, `except BaseException`, a bare `except:`) in
the package re-raises or logs the traceback, and none turns any exception into a one-line UserError unless it is on
the allow-list below, with its reason. Read with `ast`, so a handler added later is checked too."""

from __future__ import annotations

import ast
from pathlib import Path

import lora_train

PACKAGE = Path(lora_train.__file__).parent
BROAD = {"Exception", "BaseException"}

# (file relative to the package, function) -> why turning *any* exception there into a UserError is right.
# Add an entry only where the library called raises no narrower documented exception for the user's mistake.
ALLOWED_TO_USER_ERROR: dict[tuple[str, str], str] = {}

# Calls that keep the traceback for whoever reads the log or the record.
LOGS_TRACEBACK = {"exception", "print_exc", "print_exception", "format_exc", "format_exception"}


def _is_broad(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(k, ast.Name) and k.id in BROAD for k in kinds)


def _raises(handler: ast.ExceptHandler) -> list[ast.Raise]:
    return [n for stmt in handler.body for n in ast.walk(stmt) if isinstance(n, ast.Raise)]


def _keeps_traceback(handler: ast.ExceptHandler) -> bool:
    """A bare `raise`, a `raise ... from <the caught exception>` that is not a UserError, or a logging call that
    records the traceback (log.exception, exc_info=..., traceback.format_exc and kin)."""
    for r in _raises(handler):
        if r.exc is None:
            return True
        if (handler.name and isinstance(r.cause, ast.Name) and r.cause.id == handler.name
                and not _makes_user_error(r)):
            return True
    for stmt in handler.body:
        for n in ast.walk(stmt):
            if isinstance(n, ast.Call):
                name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                if name in LOGS_TRACEBACK or any(k.arg == "exc_info" for k in n.keywords):
                    return True
    return False


def _makes_user_error(r: ast.Raise) -> bool:
    return (isinstance(r.exc, ast.Call) and isinstance(r.exc.func, ast.Name) and r.exc.func.id == "UserError") or (
        isinstance(r.exc, ast.Name) and r.exc.id == "UserError")


def handlers_in(source: str, where: str) -> list[tuple[str, str, int, ast.ExceptHandler]]:
    """(file, enclosing function, line, handler) of every broad handler in one module's source."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.ExceptHandler) and _is_broad(child):
                found.append((where, function, child.lineno, child))
            visit(child, name)

    visit(ast.parse(source, where), "<module>")
    return found


def broad_handlers() -> list[tuple[str, str, int, ast.ExceptHandler]]:
    return [h for path in sorted(PACKAGE.rglob("*.py"))
            for h in handlers_in(path.read_text(), str(path.relative_to(PACKAGE)))]


def test_the_checker_tells_the_kinds_apart():
    """The checker itself, on small sources: what it must refuse, and what it must accept."""
    def judge(body: str) -> tuple[bool, bool]:
        (_, _, _, h), = handlers_in(f"def f():\n    try:\n        g()\n{body}", "x.py")
        return _keeps_traceback(h), any(_makes_user_error(r) for r in _raises(h))

    assert judge("    except Exception:\n        pass\n") == (False, False)
    assert judge("    except:\n        return None\n") == (False, False)
    assert judge("    except (ValueError, BaseException) as e:\n        print(e)\n") == (False, False)
    assert judge("    except Exception as e:\n        raise UserError(str(e)) from e\n") == (False, True)
    assert judge("    except Exception:\n        cleanup()\n        raise\n") == (True, False)
    assert judge("    except Exception as e:\n        raise RuntimeError('while x') from e\n") == (True, False)
    assert judge("    except BaseException:\n        log.exception('step failed')\n") == (True, False)
    assert judge("    except Exception:\n        log.warning('x', exc_info=True)\n") == (True, False)
    assert handlers_in("try:\n    g()\nexcept (OSError, ValueError):\n    pass\n", "x.py") == []  # narrow: fine
    assert any(fn == "counted" for f, fn, _, _ in broad_handlers())  # and it reads the package (server.py)


def test_no_broad_handler_swallows_an_error():
    swallowing = [f"{f}:{line} in {fn}()" for f, fn, line, h in broad_handlers() if not _keeps_traceback(h)
                  and not any(_makes_user_error(r) for r in _raises(h))]
    assert swallowing == [], "broad handlers with neither a re-raise nor a logged traceback:\n" + "\n".join(swallowing)


def test_no_broad_handler_turns_any_error_into_a_user_error_unless_allowed():
    renaming = [f"{f}:{line} in {fn}()" for f, fn, line, h in broad_handlers()
                if any(_makes_user_error(r) for r in _raises(h)) and (f, fn) not in ALLOWED_TO_USER_ERROR]
    assert renaming == [], "broad handlers that turn any exception into a UserError:\n" + "\n".join(renaming)


def test_every_allow_list_entry_still_exists():
    present = {(f, fn) for f, fn, _, _ in broad_handlers()}
    assert set(ALLOWED_TO_USER_ERROR) <= present, set(ALLOWED_TO_USER_ERROR) - present
