#!/usr/bin/env python3
"""Check an edgekit bundle on the device: numpy and onnxruntime only (Pillow for --image, openvino optional).

    python check.py                       # checksums, then the .onnx and the .ort on the golden inputs (CPU)
    python check.py --providers cpu,cuda  # every listed execution provider
    python check.py --runtime openvino    # the .onnx in OpenVINO (a bundle packaged --runtimes ort,openvino
                                          # runs it by default where openvino is installed)
    python check.py --image photo.jpg     # one photo through the exact preprocessing: the top-5
    python check.py --json                # every number as one JSON object

What it does: verifies every file's sha256 against manifest.json; runs the model in both formats on
the golden inputs (photos preprocessed by edgekit) with the session options this CPU needs (read from
/proc/cpuinfo); compares the outputs with the reference stored beside them, using the metrics of
`edgekit verify` and the gates for the file's precision recorded in the manifest; prints PASS/FAIL per
model format x provider (x runtime).

Exit codes: 0 every check passed; 1 a check failed (checksum, gate, a model that does not run);
2 the bundle is broken (no manifest, a listed file missing, unreadable golden data) or bad usage;
3 a requested execution provider, runtime or library is not available here.

This file is part of edgekit (edgekit/ondevice/check.py) and copied verbatim into every bundle, with the device
side's other modules (DEVICE_MODULES: edgekit imports the same files). Run as a script, it imports each of them
only once its bytes match the sha256 the manifest gives it: it hashes them itself, then runs exactly the bytes it
hashed; a module that does not match is not imported, and no model is run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import stat
import sys
from pathlib import Path

try:
    import numpy as np
except ImportError:  # pragma: no cover - the device lacks numpy
    sys.stderr.write("error: check.py needs numpy and onnxruntime: pip install numpy onnxruntime\n")
    sys.exit(3)

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
EXIT_OK, EXIT_FAILED, EXIT_BROKEN, EXIT_UNAVAILABLE = 0, 1, 2, 3
# The device side's modules beside this file in a bundle (edgekit.ondevice.<name> in edgekit).
DEVICE_MODULES = ("metrics", "cpu", "sessions", "bundle_files", "preprocess", "report", "openvino_run")
BUNDLE_PACKAGE = "edgekit_bundle"  # the name they are imported under when this file runs as a script
RUNTIMES = ("ort", "openvino")
OPENVINO_ROW = "OpenVINO runtime"  # the provider column of a row run in OpenVINO (not ORT's OpenVINO provider)

# Bounds on what a bundle may declare or hold, checked before anything is allocated.
MAX_MANIFEST_BYTES = 16 << 20
MAX_SCRIPT_BYTES = 4 << 20
MAX_IMAGE_BYTES = 256 << 20
MAX_IMAGE_PIXELS = 64_000_000  # PIL refuses more (a decompression bomb) instead of decoding it
MAX_GOLDEN_ARRAY_BYTES = 1 << 30
MAX_GOLDEN_SAMPLES = 100_000


class BrokenBundle(Exception):
    """The bundle cannot be checked at all (exit 2)."""


class BadImage(Exception):
    """--image names something that is not a decodable image of a sane size (exit 2)."""


class Tampered(Exception):
    """A file does not match the manifest's checksum, so it is not used at all (exit 1)."""


@contextlib.contextmanager
def open_regular(path: Path, label: str, limit: int, follow_symlinks: bool = True, missing: str | None = None,
                 refused: str | None = None):
    """`path` opened for reading, blocking, once it is known to be a regular file of at most `limit` bytes: a FIFO,
    device or socket is refused without blocking, a symlink too unless `follow_symlinks`, an oversize file before
    it is read (BrokenBundle, LABEL first; MISSING and REFUSED replace the lines for an absent or unopenable file)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BrokenBundle(missing or f"{label} does not exist") from None
    except OSError as exc:
        raise BrokenBundle(f"{refused}: {exc.strerror or exc}" if refused else
                           f"{label} cannot be opened ({exc.strerror or exc}); a symlink is not allowed here"
                           if not follow_symlinks else f"{label} cannot be opened: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BrokenBundle(f"{label} is not a regular file")
        if info.st_size > limit:
            raise BrokenBundle(f"{label} is {info.st_size} bytes; at most {limit} are read")
        os.set_blocking(fd, True)
        yield f


def read_regular(path: Path, what: str, limit: int, follow_symlinks: bool = True) -> bytes:
    """A regular file's bytes, at most `limit` of them (open_regular's refusals, BrokenBundle)."""
    with open_regular(path, f"{what} {path}", limit, follow_symlinks) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BrokenBundle(f"{what} {path} grew past {limit} bytes while it was read")
    return data


def parse_manifest(raw: bytes, path: Path, expect_sha256: str | None = None) -> tuple[dict, str]:
    """(the manifest's JSON object, its sha256) from its bytes: Tampered unless it has `expect_sha256`,
    BrokenBundle when it is not an edgekit bundle manifest of this format."""
    actual = hashlib.sha256(raw).hexdigest()
    if expect_sha256 is not None and actual != expect_sha256.strip().lower():
        raise Tampered(f"manifest sha256 is {actual}, not the expected {expect_sha256.strip().lower()}")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BrokenBundle(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("edgekit_bundle") != BUNDLE_FORMAT:
        raise BrokenBundle(f"{path} is not an edgekit bundle manifest (format {BUNDLE_FORMAT})")
    return manifest, actual


# --- the device side's modules: edgekit's own when edgekit imports this file, else the verified copies ----------


class _VerifiedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports BUNDLE_PACKAGE.<name> from <name>.py beside this file only when its bytes have the sha256 the
    manifest gives it; nothing else under that package is found (its __path__ is empty)."""

    def __init__(self, folder: Path, hashes: dict[str, str | None]):
        self.folder, self.hashes = folder, hashes

    def find_spec(self, name, path=None, target=None):
        short = name[len(BUNDLE_PACKAGE) + 1:] if name.startswith(BUNDLE_PACKAGE + ".") else None
        if name == BUNDLE_PACKAGE or short in self.hashes:
            return importlib.machinery.ModuleSpec(name, self, is_package=name == BUNDLE_PACKAGE)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if module.__name__ == BUNDLE_PACKAGE:
            module.__path__ = []
            return
        short = module.__name__.rsplit(".", 1)[1]
        expected = self.hashes[short]
        if expected is None:
            raise BrokenBundle(f"the manifest gives {short}.py no sha256; copy the whole bundle")
        here = self.folder / f"{short}.py"
        if not here.exists() and not here.is_symlink():
            raise BrokenBundle(f"{short}.py is listed in the manifest but missing from {self.folder}")
        data = read_regular(here, f"{short}.py", MAX_SCRIPT_BYTES, follow_symlinks=False)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise Tampered(f"sha256 mismatch: {short}.py is {actual[:16]}..., the manifest says {expected[:16]}...; "
                           "it was not imported, and no model was run")
        module.__file__ = str(here)
        exec(compile(data, str(here), "exec"), module.__dict__)


def trust_modules(folder: Path, expect_manifest: str | None = None) -> None:
    """Run as a script: read the manifest once (bounded, not a symlink; pinned by `expect_manifest`) and let
    DEVICE_MODULES be imported from `folder` only with the sha256 it gives each (_VerifiedModules)."""
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise BrokenBundle(f"{path} does not exist: is {folder} an edgekit bundle?")
    manifest, _sha = parse_manifest(read_regular(path, "manifest", MAX_MANIFEST_BYTES, follow_symlinks=False), path,
                                    expect_manifest)
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    hashes = {}
    for name in DEVICE_MODULES:
        entry = files.get(f"{name}.py")
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        hashes[name] = sha if isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) else None
    sys.modules[f"{BUNDLE_PACKAGE}.check"] = sys.modules[__name__]  # the modules' `from .check import ...`: this file
    sys.meta_path.insert(0, _VerifiedModules(Path(folder).resolve(), hashes))


def _m(name: str):
    """A device-side module: edgekit.ondevice.<name> in edgekit, the verified copy beside this script otherwise."""
    return importlib.import_module(f"{__package__ or BUNDLE_PACKAGE}.{name}")


def parse_runtimes(spec: str | None) -> list[str] | None:
    """'ort,openvino' -> ['ort', 'openvino']; None: what the manifest packaged the bundle for."""
    if spec is None:
        return None
    names = []
    for part in spec.split(","):
        name = {"onnxruntime": "ort", "ov": "openvino"}.get(part.strip().lower(), part.strip().lower())
        if name and name not in RUNTIMES:
            raise argparse.ArgumentTypeError(f"unknown runtime {part.strip()!r}: use ort, openvino or ort,openvino")
        if name and name not in names:
            names.append(name)
    return names or None


# --- the checks -------------------------------------------------------------------------------------------


def _plans(manifest: dict, providers: list[str], runtimes: list[str] | None, make_session, make_openvino, notes):
    """[(provider column, session factory, [(format, file)])] for each runtime this check runs: ORT on each provider
    (the .onnx and the .ort), OpenVINO (the .onnx) where it is asked for or the bundle was packaged for it.
    OpenVINO missing is a note when the manifest asked for it, an UNAVAILABLE row when the user did."""
    bf, ov = _m("bundle_files"), _m("openvino_run")
    asked = runtimes is not None  # else ONNX Runtime, and OpenVINO too where the bundle was packaged for it
    runtimes = runtimes or ["ort", *(["openvino"] if "openvino" in manifest["check_runtimes"] else [])]
    plans = [(p, make_session, bf.model_files(manifest)) for p in providers] if "ort" in runtimes else []
    if "openvino" in runtimes:
        missing = None if make_openvino is not None else ov.openvino_missing()
        if missing is None:
            plans.append((OPENVINO_ROW, make_openvino or ov.openvino_session, bf.model_files(manifest)[:1]))
        elif asked:
            plans.append((OPENVINO_ROW, f"{missing}: pip install openvino", bf.model_files(manifest)[:1]))
        else:
            notes.append(f"{missing}: skipped (the bundle was packaged for ONNX Runtime and OpenVINO; pip install "
                         "openvino to check it in both)")
    return plans


def run_checks(folder, providers=None, cpu: dict | None = None, make_session=None, apply_session_options: bool = True,
               expect_manifest: str | None = None, gates: dict | None = None, runtimes: list[str] | None = None,
               make_openvino=None) -> dict:
    """Every check of the bundle in `folder`, as one dict (see `exit_code`, `passed`, `rows`).

    `make_session(path, provider, config)` creates the ORT sessions, `make_openvino(path, provider, config)` the
    OpenVINO ones (default: plain onnxruntime / openvino; edgekit passes its own); `runtimes`: ort, openvino
    (default: what the manifest's check_runtimes says, OpenVINO skipped with a note where it is not installed)."""
    bf, sessions, metrics, cpu_mod = _m("bundle_files"), _m("sessions"), _m("metrics"), _m("cpu")
    folder = Path(folder)
    providers = providers or [sessions.PROVIDERS["cpu"]]
    manifest = bf.read_manifest(folder, expect_manifest)
    checksums = bf.verify_checksums(folder, manifest)
    golden = bf.load_golden(folder, manifest)
    cpu = cpu or cpu_mod.cpu_facts()
    config, notes = cpu_mod.session_options_for(manifest, cpu) if apply_session_options else ({}, [])
    unlisted = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST
                      and p.name not in manifest["files"] and not p.name.startswith("."))
    if unlisted:
        notes.append(f"not in the manifest, so not checked: {', '.join(unlisted)}")
    left_out = (manifest.get("ort_format") or {}).get("left_out")
    if left_out:
        notes.append(f"no .ort in this bundle: {left_out}")
    if not apply_session_options and manifest.get("session_options"):
        notes.append("--no-session-options: ORT's defaults, whatever the manifest says this CPU needs")
    overrides = gates or {}
    gates = {key: overrides.get(key, manifest["gates"].get(key)) for key in metrics.GATE_KEYS}
    if overrides:
        notes.append("gates given on the command line: " + ", ".join(f"{k} {v}" for k, v in overrides.items()))
    inputs, reference = golden["inputs"], golden["outputs"]
    rows = []
    for provider, factory, files in _plans(manifest, providers, runtimes, make_session or sessions.ort_session,
                                           make_openvino, notes):
        outputs, not_started = {}, None
        runtime = "openvino" if provider == OPENVINO_ROW else "ort"
        here = dict(config) if runtime == "ort" else {}
        for fmt, name in files:
            row = {"format": fmt, "file": name, "provider": provider, "runtime": runtime, "batch": None,
                   "status": "FAIL", "session_options": here, "metrics": None, "failures": [],
                   "vs_packaging_max_abs": None, "vs_onnx_max_abs": None}
            try:
                if not_started is not None or isinstance(factory, str):  # do not ask twice: it said why the first time
                    raise not_started or sessions.ProviderNotStarted(factory)
                session = factory(folder / name, provider, here)
            except sessions.ProviderNotStarted as exc:
                not_started = exc
                row.update(status="UNAVAILABLE", failures=[str(exc)])
                rows.append(row)
                continue
            except Exception as exc:  # the file does not load: a failed check
                row["failures"] = [f"{'OpenVINO' if runtime == 'openvino' else 'onnxruntime'} cannot load {name}: "
                                   f"{sessions.first_line(exc)}"]
                rows.append(row)
                continue
            for batch in sessions.batch_sizes(session):
                rows.append(_checked_row(dict(row, batch=batch, failures=[]), session, inputs, batch, reference, gates,
                                         golden, outputs, manifest, metrics, sessions))
    bad_sums = [c for c in checksums if not c["ok"]]
    failed = bool(bad_sums) or any(r["status"] == "FAIL" for r in rows)
    unavailable = any(r["status"] == "UNAVAILABLE" for r in rows)
    exit_code = EXIT_FAILED if failed else EXIT_UNAVAILABLE if unavailable else EXIT_OK
    return {
        "bundle": str(folder), "manifest_sha256": manifest["_sha256"], "model": manifest["model"].get("name"),
        "precision": manifest.get("precision"), "runtimes": sorted({r["runtime"] for r in rows}),
        "gates": gates, "checksums": checksums, "cpu": cpu, "session_options": config, "notes": notes, "rows": rows,
        "golden_samples": int(len(inputs)), "passed": exit_code == EXIT_OK, "exit_code": exit_code,
        "reasons": [c["reason"] for c in bad_sums]
        + [f"{r['format']} on {r['provider']}" + (f" batch {r['batch']}" if r["batch"] else "") + ": " + "; ".join(r["failures"])
           for r in rows if r["status"] != "PASS"],
    }


def _checked_row(this, session, inputs, batch, reference, gates, golden, outputs, manifest, metrics, sessions) -> dict:
    """One row: the model on the golden inputs at `batch`, its metrics against the reference and the gates, and
    (for the .ort) how far it is from the .onnx at the same batch."""
    try:
        got = sessions.run_model(session, inputs, batch)
    except Exception as exc:
        this["failures"] = [f"{this['runtime'] == 'openvino' and 'OpenVINO' or 'onnxruntime'} cannot run {this['file']}: "
                            f"{sessions.first_line(exc)}"]
        return this
    try:
        m = metrics.output_metrics(reference, got, gates.get("atol"), gates.get("rtol"))
    except ValueError as exc:
        this["failures"] = [f"output {exc}"]
        return this
    this["metrics"] = m
    this["failures"] = metrics.gate_failures(m, gates)
    this["short"] = [short for short, _ in metrics.failed_gates(m, gates)]
    if golden["ort_outputs"] is not None and golden["ort_outputs"].shape == got.shape:
        this["vs_packaging_max_abs"] = float(np.abs(got.astype(np.float64) - golden["ort_outputs"]).max())
    if this["format"] == "onnx":
        outputs[batch] = got
    elif batch in outputs:
        this["vs_onnx_max_abs"] = float(np.abs(got.astype(np.float64) - outputs[batch]).max())
        differs = metrics.format_difference_failure(
            str(manifest.get("precision")), this["vs_onnx_max_abs"], float(np.abs(outputs[batch]).max()))
        if differs:
            this["failures"].append(f"the {this['format']} {differs}")
            this.setdefault("short", []).append(f"differs from the .onnx ({this['vs_onnx_max_abs']:.2g})")
    this["status"] = "FAIL" if this["failures"] else "PASS"
    return this


# --- one image: the reference for the device's own preprocessing ------------------------------------------


def classify_image(folder, image_path, provider: str | None = None, fmt: str = "onnx", cpu: dict | None = None,
                   make_session=None, apply_session_options: bool = True, expect_manifest: str | None = None) -> dict:
    """One image through the manifest's preprocessing and the model: its top-5 (with labels when present).
    The bundle's files are checked against the manifest first: a tampered one is not used."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("--image needs Pillow: pip install pillow") from None
    import io
    import warnings

    bf, sessions, cpu_mod, pre_mod = _m("bundle_files"), _m("sessions"), _m("cpu"), _m("preprocess")
    folder = Path(folder)
    manifest = bf.read_manifest(folder, expect_manifest)
    bad = [c["reason"] for c in bf.verify_checksums(folder, manifest) if not c["ok"]]
    if bad:
        raise Tampered("; ".join(bad))
    pre = manifest["preprocessing"]
    files = dict(bf.model_files(manifest))
    if fmt not in files:
        raise BrokenBundle(f"the bundle has no {fmt} model")
    config, notes = cpu_mod.session_options_for(manifest, cpu or cpu_mod.cpu_facts()) if apply_session_options else ({}, [])
    try:
        data = read_regular(Path(image_path), "image", MAX_IMAGE_BYTES)
    except BrokenBundle as exc:  # the photo is the user's input, not the bundle's
        raise BadImage(str(exc)) from None
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                pixels = pre_mod.crop_uint8(image, pre)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{image_path} is a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"{image_path} cannot be decoded as an image: {exc}") from None
    tensor = pre_mod.normalize(pixels[None], pre["mean"], pre["std"])
    session = (make_session or sessions.ort_session)(folder / files[fmt], provider or sessions.PROVIDERS["cpu"], config)
    logits = sessions.run_model(session, tensor, sessions.batch_sizes(session)[0])[0].astype(np.float64).ravel()
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    labels = (manifest.get("classes") or {}).get("labels")
    top = np.argsort(-logits)[:5]
    return {
        "image": str(image_path), "model": files[fmt], "preprocessing": pre.get("describe"), "session_options": config,
        "notes": notes, "input_sha256": hashlib.sha256(tensor.tobytes()).hexdigest(),
        "input_stats": {"min": float(tensor.min()), "max": float(tensor.max()), "mean": float(tensor.mean())},
        "top5": [{"rank": i + 1, "class": int(c), "label": labels[c] if labels and c < len(labels) else None,
                  "logit": float(logits[c]), "probability": float(probs[c])} for i, c in enumerate(top)],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check this edgekit bundle with numpy and onnxruntime only.")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help="bundle folder (default: this file's)")
    parser.add_argument("--providers", default=None, help="comma-separated: cpu,cuda,... or 'available' (default: cpu)")
    parser.add_argument("--runtime", "--runtimes", dest="runtime", default=None, type=parse_runtimes,
                        help="ort, openvino or ort,openvino (default: what the bundle was packaged for; OpenVINO is "
                        "skipped where it is not installed unless named here)")
    parser.add_argument("--image", type=Path, default=None, help="run one image (needs Pillow) and print the top-5")
    parser.add_argument("--format", choices=("onnx", "ort"), default="onnx", help="model format for --image")
    parser.add_argument("--no-session-options", action="store_true", help="ORT's defaults, not what the manifest says this CPU needs")
    parser.add_argument("--cpu-flags", default=None, help="pretend this CPU has only these flags (space or comma separated)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--expect-manifest", default=None, metavar="SHA256",
                        help="fail unless manifest.json has this sha256 (printed when the bundle was made): a check "
                        "shipped inside a bundle cannot vouch for the bundle's own manifest")
    args = parser.parse_args(argv)
    exits = [(Tampered, "FAIL: ", sys.stdout, EXIT_FAILED), (BadImage, "error: ", sys.stderr, EXIT_BROKEN),
             (BrokenBundle, "error: broken bundle: ", sys.stderr, EXIT_BROKEN)]
    try:
        if not __package__:
            trust_modules(args.bundle, args.expect_manifest)
        sessions, report = _m("sessions"), _m("report")
        exits += [(sessions.ProviderNotStarted, "error: ", sys.stderr, EXIT_UNAVAILABLE),
                  (ImportError, "error: ", sys.stderr, EXIT_UNAVAILABLE), (OSError, "error: ", sys.stderr, EXIT_BROKEN)]
        cpu = _m("cpu").cpu_facts(flags=args.cpu_flags)
        if args.image is not None:
            providers = sessions.parse_providers(args.providers)
            result = classify_image(args.bundle, args.image, providers[0], args.format, cpu,
                                    apply_session_options=not args.no_session_options,
                                    expect_manifest=args.expect_manifest)
            print(report.to_json(result) if args.json else report.format_image(result))
            return EXIT_OK
        result = run_checks(args.bundle, sessions.parse_providers(args.providers), cpu,
                            apply_session_options=not args.no_session_options, expect_manifest=args.expect_manifest,
                            runtimes=args.runtime)
    except Exception as exc:
        # (prefix, stream, exit code) per kind; OSError: --image names a missing or unreadable photo
        found = next(((p, s, c) for k, p, s, c in exits if isinstance(exc, k)), None)
        if found is None:
            raise
        prefix, stream, code = found
        print(f"{prefix}{exc}", file=stream)
        return code
    print(report.to_json(result) if args.json else report.format_report(result))
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
