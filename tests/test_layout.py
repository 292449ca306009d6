"""The house: every module lives on a floor and imports only from its own floor or below; stages only orchestrate
and never import each other; the ground floor (core/) imports nothing of edgekit but itself and ondevice/; no import
circle; no module over 450 lines outside the one that says why."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgekit"
STAGES = {"export", "quantize", "verify", "bench", "package", "convert", "importer", "debug"}
# Above the stages, like the CLI: a workflow runs several stages as a user would (sweep: export, then quantize and
# judge each file), so it may import them; no stage and nothing of the engine imports a workflow.
WORKFLOWS = {"sweep"}
# The floors, bottom up: a module imports only from its own floor or a lower one (the stages, one floor, also never
# import each other). The key is the first name under edgekit/ (a folder, or a module at the package root).
FLOORS = [
    {"ondevice", ""},  # what runs on the device (imports nothing of edgekit); "" is the package root (__version__)
    {"core"},  # errors, limits, files, serialize, provenance, knobs
    {"data"},  # images and preprocessing
    {"judge"},  # comparison, gates, int8 recipes and how an int8 file is judged
    {"onnxfile"},  # one ONNX file and its graph facts
    {"runtimes", "models"},  # one runner per runtime; the model registry, families and facts
    {"layer_error", "bundle", "reference"},  # per-layer int8 error; a bundle's host side; the reference runner
    {"plots"},  # the PNGs
    STAGES,
    WORKFLOWS,
    {"cli", "__main__"},
]
ENGINE = set().union(*FLOORS[1:8])


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
    # ondevice/check.py included: the device side is a package of small modules, copied into every bundle
    allowed: dict[str, int] = {}
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
        optional = {"openvino"} if path.name == "openvino_run.py" else set()  # the device's one OpenVINO module
        assert third_party <= {"numpy", "onnxruntime", "PIL", "__future__", *optional,
                               *__import__("sys").stdlib_module_names}, (path.name, third_party)


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


def _floor(module: str) -> int | None:
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else ""
    return next((n for n, floor in enumerate(FLOORS) if room in floor), None)


def test_every_module_lives_on_a_floor():
    # a new module goes into the folder of the floor it belongs to (README, "Where new things go"), not loose at
    # the package root: the root holds only the stages export.py and convert.py, plots.py and __main__.py
    homeless = sorted(m for m in _modules() if _floor(m) is None)
    assert not homeless, homeless


def test_no_import_runs_up_a_floor():
    modules = _modules()
    upward = [
        f"{m} (floor {_floor(m)}) imports {i} (floor {_floor(i)})" for m, p in modules.items()
        for i in _imports(p) if (_floor(i) or 0) > (_floor(m) or 0)
    ]
    assert not upward, upward


def test_the_engine_imports_no_stage_and_no_workflow():
    offenders = [
        f"{m} imports {i}" for m, p in _modules().items() if m.split(".")[1:2] and m.split(".")[1] in ENGINE
        for i in _imports(p) if _stage(i) is not None or _workflow(i)
    ]
    assert not offenders, offenders


def test_the_ground_floor_imports_only_itself_and_ondevice():
    # core/ (errors, limits, files, serialize, provenance, knobs) is what every floor may use: it imports nothing of
    # edgekit but core/ and ondevice/ (and the package root, for __version__)
    offenders = [
        f"{m} imports {i}" for m, p in _modules().items() if m == "edgekit.core" or m.startswith("edgekit.core.")
        for i in _imports(p)
        if i != "edgekit" and not any(i == f"edgekit.{r}" or i.startswith(f"edgekit.{r}.") for r in ("core", "ondevice"))
    ]
    assert not offenders, offenders


def test_a_folders_init_says_what_it_holds_and_reexports_nothing():
    # importers use full paths (edgekit.onnxfile.artifact, edgekit.core.errors): an engine folder's __init__ is a
    # docstring; onnxfile/__init__ is the OnnxFile module itself and imports its floor, re-exporting none of it
    for room in ("core", "data", "judge", "runtimes"):
        init = PACKAGE / room / "__init__.py"
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{room}/__init__.py says nothing about what the floor holds"
        assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], f"{room}/__init__.py imports"


def test_no_flat_module_is_left_at_its_old_path():
    # the regrouping (issue 19, "Rooms") left no compatibility shim behind
    moved = {"artifact", "outputs", "metadata", "metadata_schema", "graph", "structure", "preprocessing", "images",
             "tensors", "runtime", "runners", "openvino_runtime", "compare", "targets", "errors", "limits", "files",
             "serialize", "provenance", "knobs", "calibration", "rewrites", "profile", "ort_tools", "zoo", "onnxfile"}
    assert not [m for m in moved if (PACKAGE / f"{m}.py").exists()]


# Running a model is the runtimes' business (runtimes/ort.py, openvino_model.py, torch_eager.py, emulated.py) and the
# device side's (ondevice/): nothing else constructs an ONNX Runtime session or an OpenVINO core, reaches through an
# edgekit Session to ORT's, binds I/O, or calls ORT's raw run(None, ...).
RAW_RUNTIME = ("InferenceSession(", "SessionOptions(", ".session.", ".run(None", "io_binding", "Core()", ".compile_model(")
# Places not yet moved behind the runtimes (each one a named debt; the list only ever shrinks).
RAW_RUNTIME_DEBT = {
}


def test_nothing_outside_runtimes_touches_a_session_directly():
    found: dict[str, int] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("edgekit/runtimes/", "edgekit/ondevice/")):
            continue
        hits = sum(line.count(p) for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
                   for p in RAW_RUNTIME)
        if hits:
            found[rel] = hits
    over = {f: n for f, n in found.items() if n > RAW_RUNTIME_DEBT.get(f, 0)}
    assert not over, f"raw runtime calls outside runtimes/: {over} (open a runner through edgekit.runtimes instead)"


def _six_line_runs(path: Path) -> dict[tuple[str, ...], int]:
    """Every run of six code lines of a file (white space folded; blank lines, comments and imports passed over),
    with the line it starts at."""
    lines = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = " ".join(raw.split())
        if line and not line.startswith(("#", "import ", "from ")) and line not in (")", "]", "}", '"""'):
            lines.append((number, line))
    return {tuple(text for _, text in lines[i:i + 6]): lines[i][0] for i in range(len(lines) - 5)}


def test_the_device_side_is_the_one_copy():
    # the host imports edgekit/ondevice/ (CPU flags, providers, session config, batching, crop, hashing) instead of
    # keeping its own copy: no run of six lines stands both in ondevice/ and elsewhere in edgekit/ (issue 27)
    device = {}
    for path in (PACKAGE / "ondevice").glob("*.py"):
        device.update({run: f"{path.name}:{n}" for run, n in _six_line_runs(path).items()})
    copies = [f"{path.relative_to(PACKAGE)}:{n} ~ ondevice/{device[run]}"
              for path in PACKAGE.rglob("*.py") if path.parent.name != "ondevice"
              for run, n in _six_line_runs(path).items() if run in device]
    assert not copies, copies
