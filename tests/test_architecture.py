"""The package's structure, read from its source: no import cycle, the layer order holds, no
private name crosses modules, importing changes no process-wide setting, dvc.yaml's code deps
follow the one rule of ``kdpipe.codebase``, every "§" reference resolves inside the repo, and
every third-party import is declared."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from kdpipe.codebase import HARNESS, PACKAGE_DIR, import_closure, imported_modules, module_file, module_name

# Bottom to top: a module may import its own layer and those below, never one above.
# The torch-free runtime (and the package it sits in) imports nothing of kdpipe (test below), so
# it sits at the bottom: QA's evaluation reads answers with the deployed span search.
LAYERS = [
    ("kdpipe", "kdpipe.env", "kdpipe.files", "kdpipe.codebase", "kdpipe.export.runtime", "=kdpipe.export"),
    ("kdpipe.config",),
    ("kdpipe.data",),
    ("kdpipe.models",),
    ("kdpipe.methods",),
    ("kdpipe.evaluation",),
    ("kdpipe.training",),
    ("kdpipe.export",),
    ("kdpipe.pipeline",),
    ("kdpipe.tracking", "kdpipe.stage", "kdpipe.cli"),
]
SOURCES = sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(module: str) -> int:
    # the most specific entry wins: kdpipe.export.runtime over kdpipe.export; "=x" is x alone
    best, depth = None, -1.0
    for index, names in enumerate(LAYERS):
        for name in names:
            exact = name.startswith("=")
            name = name.lstrip("=")
            found = module == name or (not exact and name != "kdpipe" and module.startswith(name + "."))
            if found and name.count(".") + 0.5 * exact > depth:
                best, depth = index, name.count(".") + 0.5 * exact
    assert best is not None or module == "kdpipe", f"{module} is in no layer: add it to LAYERS"
    return 0 if best is None else best


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) - {module_name(p)} for p in SOURCES}


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_layer_order_holds():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in import_graph().items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_layer_order_test_sees_a_violation(tmp_path):
    """The graph reader finds function-level imports too, so a lazy import cannot hide an upward edge."""
    fake = tmp_path / "kdpipe"
    (fake / "models").mkdir(parents=True)
    (fake / "pipeline").mkdir()
    for f in ("__init__.py", "models/__init__.py", "pipeline/__init__.py", "pipeline/distill.py"):
        (fake / f).write_text("")
    (fake / "models" / "x.py").write_text("def f():\n    from kdpipe.pipeline.distill import g\n")
    assert "kdpipe.pipeline.distill" in imported_modules(fake / "models" / "x.py", fake)


def test_runtime_imports_nothing_else_of_kdpipe():
    runtime = PACKAGE_DIR / "export" / "runtime.py"
    assert imported_modules(runtime) == set()
    for init in (PACKAGE_DIR / "__init__.py", PACKAGE_DIR / "export" / "__init__.py"):
        assert imported_modules(init) == set(), f"{init} must import nothing (runtime loads through it)"


def test_no_private_name_crosses_modules():
    crossing = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdpipe"):
                crossing += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.endswith("__")]
    assert not crossing, crossing


def test_importing_kdpipe_changes_no_process_wide_setting():
    # third-party packages first: what they set on import themselves (torch's inductor cache dir) is not ours
    heavy = sorted(m for m in _third_party_imports(dotted=True) if not m.startswith("matplotlib"))
    code = (
        "import logging, os, pkgutil, importlib, sys\n"
        f"for name in {heavy!r}: importlib.import_module(name)\n"
        "import kdpipe\n"
        "env = dict(os.environ)\n"
        "loggers = {n: list(l.filters) for n, l in logging.Logger.manager.loggerDict.items()"
        " if isinstance(l, logging.Logger)}\n"
        "root = list(logging.getLogger().filters)\n"
        "for m in pkgutil.walk_packages(kdpipe.__path__, 'kdpipe.'):\n"
        "    importlib.import_module(m.name)\n"
        # set by torch and mlflow themselves when transformers' lazy modules load them
        "theirs = {'TORCHINDUCTOR_CACHE_DIR', '_MLFLOW_TELEMETRY_SESSION_ID'}\n"
        "changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)"
        " and k not in theirs)\n"
        "assert not changed, f'environment changed at import: {changed}'\n"
        "filtered = [n for n, l in logging.Logger.manager.loggerDict.items() if isinstance(l, logging.Logger)"
        " and l.filters and list(l.filters) != loggers.get(n, [])]\n"
        "assert not filtered and logging.getLogger().filters == root, f'log filters added at import: {filtered}'\n"
        "import transformers\n"
        "assert transformers.logging.get_verbosity() == transformers.logging.WARNING\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'a chart backend was chosen at import'\n"
        "print('CLEAN')\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0 and "CLEAN" in proc.stdout, proc.stderr[-3000:]


def test_no_import_order_workarounds():
    flagged = [f"{p.relative_to(REPO)}:{i}" for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1)
               if "noqa: E402" in line]
    assert not flagged, flagged


# ------------------------------------------------------------------------------- dvc.yaml deps
def _covered(deps: list[str]) -> set[Path]:
    files = set()
    for dep in deps:
        path = (REPO / dep).resolve()
        if not dep.startswith("kdpipe"):
            continue
        files |= {p for p in path.rglob("*.py") if "__pycache__" not in p.parts} if path.is_dir() else {path}
    return files


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]))
def test_dvc_code_deps_are_exactly_the_stage_imports(stage):
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    spec = spec.get("do", spec)
    script = re.search(r"python (stages/\S+\.py)", spec["cmd"]).group(1)
    assert script in spec["deps"], f"{stage}: its script {script} is not a dependency"
    wanted = import_closure(REPO / script)
    listed = _covered(spec["deps"])
    rel = lambda files: sorted(str(p.relative_to(REPO)) for p in files)  # noqa: E731
    assert not wanted - listed, f"dvc.yaml stage {stage} misses code it runs: {rel(wanted - listed)}"
    assert not listed - wanted, f"dvc.yaml stage {stage} lists code it never imports: {rel(listed - wanted)}"
    assert not any(module_file(h) in listed for h in HARNESS), f"{stage} lists a harness module"


def test_fingerprint_follows_the_same_rule():
    from kdpipe.training.checkpoints import fingerprint

    closure = import_closure(module_file("kdpipe.pipeline.distill"))
    assert module_file("kdpipe.methods.cr_ild") in closure and module_file("kdpipe.tracking") not in closure
    assert fingerprint("x", code="kdpipe.pipeline.distill") != fingerprint("y", code="kdpipe.pipeline.distill")
    assert fingerprint("x", code="kdpipe.pipeline.data") != fingerprint("x", code="kdpipe.pipeline.distill")


# ------------------------------------------------------------------------------ references, deps
def test_every_section_reference_resolves_inside_the_repo():
    docs = {name: {m.group(1) for m in re.finditer(r"^#+\s+(\d+(?:\.\d+)*)[.\s]", (REPO / name).read_text(), re.M)}
            for name in ("docs/methods.md", "docs/onnx.md")}
    for name in docs:  # numbered list items inside a section ("3.9.4", "pitfall 1") count too
        docs[name] |= set(re.findall(r"^\s*(?:\*\*|- \*\*|\d+\.\s\*\*)?(\d+\.\d+\.\d+)", (REPO / name).read_text(), re.M))
    bad = []
    for path in [*SOURCES, *(REPO / "stages").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        text = path.read_text()
        cited = set(re.findall(r"§(\d+(?:\.\d+)*)", text))
        if not cited:
            continue
        named = [d for d in docs if d in text]
        if not named:
            bad.append(f"{path.relative_to(REPO)}: cites § but names no docs/ file")
            continue
        for section in cited:
            if not any(section in docs[d] for d in named):
                bad.append(f"{path.relative_to(REPO)}: §{section} is not a section of {', '.join(named)}")
    assert not bad, "\n".join(bad)


def test_every_third_party_import_is_declared_with_bounds_and_pinned():
    declared = {}
    for req in _requirements():
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        declared[_norm(name)] = req
    pinned = set(_pins())
    distributions = packages_distributions()
    problems = []
    for top in sorted(_third_party_imports()):
        names = {_norm(d) for d in distributions.get(top, [])}
        hit = names & set(declared)
        if not hit:
            problems.append(f"{top}: imported but not in pyproject.toml dependencies")
            continue
        req = declared[sorted(hit)[0]]
        if not (">" in req and "<" in req):
            problems.append(f"{req}: needs a lower and an upper bound")
        if not hit & pinned:
            problems.append(f"{top}: not pinned in constraints.txt")
    for req, pin in _pins_against_bounds():
        problems.append(f"constraints.txt pins {pin}, outside pyproject.toml's {req}")
    assert not problems, problems


def _pins_against_bounds():
    from packaging.requirements import Requirement

    pins = _pins()
    for raw in _requirements():
        req = Requirement(raw)
        pin = pins.get(_norm(req.name))
        if pin is not None and not req.specifier.contains(pin.split("+")[0], prereleases=True):
            yield raw, f"{req.name}=={pin}"


def _requirements() -> list[str]:
    """What kdpipe's code may import: the base install (the runtime) plus the ``pipeline`` extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["pipeline"]]


def _pins() -> dict[str, str]:
    """constraints.txt as {normalised name: pinned version}."""
    lines = [line for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#")]
    return {_norm(name): version.strip() for name, version in (line.split("==") for line in lines)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports(dotted: bool = False) -> set[str]:
    """Top-level names of the third-party packages kdpipe imports (``dotted``: the full module names)."""
    found = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    found = {m if dotted else m.split(".")[0] for m in found}
    return {m for m in found if m.split(".")[0] not in {*sys.stdlib_module_names, "kdpipe", "__future__"}}
