"""The package's layering holds by test: no import circle, no upward import, no import of a path that is gone.

Layers, lowest first (docs/architecture.md): errors <- schemas <- the ground floor (modules directly in lora_train/)
<- data/ <- the command folders training/, merging/, inference/, evaluation/. merging/ may use data/; evaluation/ may
use inference/ and data/; the command folders import nothing else of each other. Imports inside functions count:
a lazy import hides a circle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lora_train"

COMMAND_FOLDERS = {"training", "merging", "inference", "evaluation"}
# Which command folders each command folder may import besides everything below it.
ALLOWED_SIDEWAYS = {"merging": {"data"}, "evaluation": {"inference", "data"}, "training": {"data"},
                    "inference": {"data"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def defined_names(path: Path) -> set[str]:
    """Top-level names a module binds (what `from module import name` may ask for)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def imports_of(path: Path, modules: dict[str, Path]) -> tuple[set[str], list[str]]:
    """The lora_train modules a file imports anywhere in it, and the imports that name nothing that exists."""
    found, missing = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "lora_train":
                    (found.add(a.name) if a.name in modules else missing.append(f"{path.name}:{node.lineno} {a.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "lora_train":
            if node.module not in modules:
                missing.append(f"{path.name}:{node.lineno} {node.module}")
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in modules:
                    found.add(sub)
                else:
                    found.add(node.module)
                    if a.name != "*" and a.name not in defined_names(modules[node.module]):
                        missing.append(f"{path.name}:{node.lineno} {node.module}.{a.name}")
    return found, missing


def layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if module == "lora_train.errors" or parts[1:2] == ["conf"]:
        return 0, "errors"
    if parts[1] == "schemas":
        return 1, "schemas"
    if len(parts) == 2 and (PACKAGE / f"{parts[1]}.py").exists():
        return 2, "ground floor"
    if parts[1] == "data":
        return 3, "data"
    return 4, parts[1]


def test_every_folder_and_module_has_its_place():
    allowed = {"schemas", "data", "training", "merging", "inference", "evaluation", "conf", "playground",
               "__pycache__"}
    ground = {"__init__", "errors", "config", "model", "adapters", "artifacts", "tiny", "memory", "console",
              "model_cache", "gguf"}
    strays = [p.name for p in PACKAGE.iterdir()
              if (p.is_dir() and p.name not in allowed) or (p.suffix == ".py" and p.stem not in ground)]
    assert not strays, f"lora_train/ holds only the layer folders and the ground floor; move: {strays}"


def test_no_upward_or_sideways_import_and_no_missing_module():
    modules = package_modules()
    problems = []
    for name, path in modules.items():
        if name == "lora_train":  # the public re-exports
            continue
        own_level, own_folder = layer(name)
        targets, missing = imports_of(path, modules)
        problems += [f"{path.relative_to(ROOT)}: imports a path that does not exist: {m}" for m in missing]
        for target in targets:
            if target == "lora_train":
                problems.append(f"{path.relative_to(ROOT)} imports the package root: import the module instead")
                continue
            level, folder = layer(target)
            if level > own_level or (level == own_level == 4 and folder != own_folder
                                        and folder not in ALLOWED_SIDEWAYS.get(own_folder, set())):
                problems.append(f"{path.relative_to(ROOT)} ({own_folder}) imports {target} ({folder})")
    assert not problems, "\n".join(sorted(problems))


def test_benchmarks_and_scripts_import_only_paths_that_exist():
    modules = package_modules()
    missing = []
    for folder in ("benchmarks", "scripts", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            missing += [f"{folder}/{m}" for m in imports_of(path, modules)[1]]
    assert not missing, "imports of module paths that no longer exist:\n" + "\n".join(missing)


def test_no_import_circle():
    modules = package_modules()
    graph = {name: imports_of(path, modules)[0] - {name} for name, path in modules.items() if name != "lora_train"}
    for name in graph:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        graph[name] = {t for t in graph[name] if t != "lora_train"}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_no_module_over_350_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350]
    assert not long, f"split these modules: {long}"
