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


def code_deps(script: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """``import_closure(script)`` as dvc.yaml lists it: repo-relative paths, with a folder standing
    for all of its files when the closure holds every one of them."""
    closure = import_closure(script, package_dir)
    root = package_dir.parent

    def files_under(folder: Path) -> set[Path]:
        return {p for p in folder.rglob("*.py") if "__pycache__" not in p.parts}

    deps: list[str] = []

    def walk(folder: Path) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and entry.name != "__pycache__":
                inside = files_under(entry)
                if inside and inside <= closure:
                    deps.append(str(entry.relative_to(root)))
                elif inside & closure:
                    walk(entry)
            elif entry.suffix == ".py" and entry in closure:
                deps.append(str(entry.relative_to(root)))
    walk(package_dir)
    return sorted(deps)


def sync_dvc_yaml(dvc_yaml: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """``dvc_yaml``'s text with each stage's kdpipe code deps replaced by ``code_deps`` of its
    script (comments and every other line kept): ``python -m kdpipe.codebase`` after moving code."""
    import re

    lines, out, script = Path(dvc_yaml).read_text().splitlines(keepends=True), [], None
    for line in lines:
        found = re.search(r"cmd: python (stages/\S+\.py)", line)
        if found:
            script = Path(dvc_yaml).parent / found.group(1)
        dep = re.match(rf"(\s*)- {PACKAGE}(/|\s*$)", line)
        if dep and script is not None:
            indent = dep.group(1)
            out.extend(f"{indent}- {d}\n" for d in code_deps(script, package_dir))
            script = None  # the rest of this stage's kdpipe lines are replaced already
            continue
        if dep:
            continue
        out.append(line)
    return "".join(out)


if __name__ == "__main__":
    target = PACKAGE_DIR.parent / "dvc.yaml"
    target.write_text(sync_dvc_yaml(target))
    print(f"{target}: code deps synced with the import graph")
