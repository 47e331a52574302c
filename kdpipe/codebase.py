"""kdpipe's own import graph, read from the source (module-level and function-level imports).

One rule decides what a stage's results depend on, and both DVC and the resumable checkpoints
follow it: *the kdpipe modules a stage script imports, directly or through other kdpipe modules,
except the harness* (``HARNESS``: params checking, MLflow tracking, the CLI and error
formatting, which observe a run but never change what it writes).  ``dvc.yaml`` lists exactly
these files for each stage (tests/test_architecture.py derives them and fails on drift), and the
checkpoint fingerprint hashes the closure of the module that trains.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
HARNESS = frozenset({"kdpipe.stage", "kdpipe.tracking", "kdpipe.cli"})


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of a kdpipe module name, or None if there is none."""
    parts = module.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    rel = path.resolve().relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """kdpipe modules ``path`` imports anywhere in its body (and the packages they sit in,
    whose ``__init__`` runs first)."""
    tree = ast.parse(Path(path).read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from kdpipe.x import y``: y may itself be a module
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                if module_file(name, package_dir) is not None:
                    found.add(name)
    for name in list(found):  # importing a.b.c runs a/__init__ and a/b/__init__
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return found


def import_closure(start: Path, package_dir: Path = PACKAGE_DIR, stop: frozenset[str] = HARNESS) -> set[Path]:
    """Every kdpipe file that running ``start`` (a module or a stage script) imports, transitively;
    the modules in ``stop`` are neither included nor followed."""
    seen: set[str] = set()
    todo = [n for n in imported_modules(start, package_dir) if n not in stop]
    if Path(start).resolve().is_relative_to(package_dir):
        todo.append(module_name(Path(start), package_dir))
    while todo:
        name = todo.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name, package_dir), package_dir))
    return {module_file(n, package_dir) for n in seen}
