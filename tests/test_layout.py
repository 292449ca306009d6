"""The house: stages only orchestrate and never import each other; no import circle; no module over 450 lines
outside the one that says why."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgekit"
STAGES = {"export", "quantize", "verify", "bench", "package", "convert"}
# Above the stages, like the CLI: a workflow runs several stages as a user would (sweep: export, then quantize and
# judge each file), so it may import them; no stage and nothing of the engine imports a workflow.
WORKFLOWS = {"sweep"}


def _imports(path: Path) -> set[str]:
    """edgekit modules a file imports (absolute and relative, top level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(path.relative_to(ROOT).with_suffix("").parts[: -node.level])
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m == "edgekit" or m.startswith("edgekit.")}


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_of(p): p for p in PACKAGE.rglob("*.py")}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_no_stage_imports_another_stage():
    crossings = []
    for module, path in _modules().items():
        mine = _stage(module)
        if mine is None:
            continue
        for imported in _imports(path):
            other = _stage(imported)
            if other is not None and other != mine:
                crossings.append(f"{module} imports {imported}")
    assert not crossings, crossings


def test_the_engine_imports_no_stage():
    modules = _modules()
    offenders = [
        f"{m} imports {i}" for m, p in modules.items()
        if _stage(m) is None and not m.startswith("edgekit.cli") and not _workflow(m)
        for i in _imports(p) if _stage(i) is not None
    ]
    assert not offenders, offenders


def _workflow(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in WORKFLOWS


def test_only_the_cli_imports_a_workflow():
    offenders = [f"{m} imports {i}" for m, p in _modules().items() if not m.startswith("edgekit.cli") and not _workflow(m)
                 for i in _imports(p) if _workflow(i)]
    assert not offenders, offenders


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a package importing its own submodules (re-exports) is not a circle
    for m in graph:
        graph[m] = {i for i in graph[m] if not i.startswith(m + ".")}
    seen, stack, circles = set(), [], []

    def visit(node):
        if node in stack:
            circles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not circles, circles[:3]


def test_the_registry_imports_no_family():
    imported = _imports(PACKAGE / "models" / "registry.py")
    assert not imported & {"edgekit.models.textbook", "edgekit.models.torchvision", "edgekit.models.textbook_nets"}


def test_modules_stay_small():
    # ondevice/check.py is copied alone onto the device with its own CLI, and verifies every file the manifest
    # names before it trusts it: it cannot import edgekit's checks
    allowed = {"edgekit.ondevice.check": 800}
    large = {
        m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > allowed.get(m, 450)
    }
    assert not large, large


def test_device_side_files_import_nothing_from_edgekit():
    # edgekit/ondevice/ is what runs on the device (bundles' check.py and metrics.py, the emulated ORT worker):
    # numpy and onnxruntime only; check.py's one relative import (metrics, when edgekit itself loads it) aside
    folder = PACKAGE / "ondevice"
    for path in folder.glob("*.py"):
        imports = {m for m in _imports(path) if not m.startswith("edgekit.ondevice")}
        assert not imports, f"{path.name} imports {sorted(imports)}"
        tree = ast.parse(path.read_text())
        third_party = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        third_party |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert third_party <= {"numpy", "onnxruntime", "PIL", "__future__", *__import__("sys").stdlib_module_names}, (
            path.name, third_party)


def test_onnx_files_are_read_in_one_place():
    # artifact.py reads every .onnx (load_onnx validates user input; load_work_file parses edgekit's own work
    # files); the stages take an OnnxFile (edgekit/onnxfile/__init__.py) instead of re-deriving a file's facts
    readers = set()
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("load", "load_model") and \
                    isinstance(node.value, ast.Name) and node.value.id == "onnx":
                readers.add(module)
    assert readers == {"edgekit.onnxfile.artifact"}, readers
