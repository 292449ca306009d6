"""This CPU, and the ONNX Runtime session options a file needs on it: one copy, for the board and for edgekit.

The bundle's check.py reads /proc/cpuinfo with these functions on the device; edgekit reads it with the same ones
(edgekit.core.provenance), and merges session config entries with `merge_session_config` (edgekit.judge.targets),
so a file is run with the same options on the host and on the board by construction. Standard library only.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

FAKE_CPU_FLAGS_ENV = "EDGEKIT_FAKE_CPU_FLAGS"  # e.g. "avx2 fma": pretend this CPU has only these flags (tests)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni"})
X86 = ("x86_64", "amd64", "i686", "x86")
ANY_CPU = "any CPU"
X86_WITHOUT_VNNI = "x86 without VNNI"
# The CPU kinds a manifest may name session options for, and how this script recognises them.
CPU_RULES = {
    X86_WITHOUT_VNNI: "an x86 CPU whose flags have none of " + ", ".join(sorted(VNNI_FLAGS)),
    ANY_CPU: "every CPU (e.g. nodes kept in float must not be quantized again when the session starts)",
}
# Session config entries whose value is a list: ORT reads them ';'-separated.
LIST_ENTRIES = frozenset({"optimization.disable_specified_optimizers"})


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[str, set[str], bool]:
    """(model name, feature flags, whether the flags could be read) from /proc/cpuinfo: the first CPU's."""
    default = platform.processor() or platform.machine()
    model, flags, known = default, set(), False
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("model name") and ":" in line and model == default:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and ":" in line and not known:
                flags, known = set(line.split(":", 1)[1].split()), True
    except OSError:
        pass
    return model, flags, known


def fake_flags(flags: str | None = None) -> set[str] | None:
    """The flags a test pretends this CPU has (`flags`, else $EDGEKIT_FAKE_CPU_FLAGS; space or comma separated),
    or None when none are faked."""
    fake = flags if flags is not None else os.environ.get(FAKE_CPU_FLAGS_ENV)
    return None if fake is None else set(fake.replace(",", " ").split())


def cpu_facts(cpuinfo: str = "/proc/cpuinfo", flags: str | None = None) -> dict:
    """machine, model name and feature flags (from /proc/cpuinfo; `flags` or $EDGEKIT_FAKE_CPU_FLAGS fake them)."""
    model, found, known = read_cpuinfo(cpuinfo)
    faked = fake_flags(flags)
    if faked is not None:
        found, known = faked, True
    return {"machine": platform.machine(), "model": model, "flags": sorted(found), "flags_known": known,
            "faked": faked is not None}


def cpu_kinds(cpu: dict) -> list[str]:
    """The CPU_RULES kinds this CPU is; an x86 CPU whose flags cannot be read counts as without VNNI (safe)."""
    kinds = [ANY_CPU]
    if str(cpu.get("machine", "")).lower() in X86 and not (set(cpu.get("flags", [])) & VNNI_FLAGS):
        kinds.append(X86_WITHOUT_VNNI)
    return kinds


def merge_session_config(into: dict, entries: dict) -> dict:
    """`into` with `entries` added: a list-valued entry (LIST_ENTRIES) gains the new items, any other is set."""
    merged = {str(k): str(v) for k, v in into.items()}
    for key, value in entries.items():
        key, value = str(key), str(value)
        if key in LIST_ENTRIES and merged.get(key):
            items = merged[key].split(";")
            merged[key] = ";".join(items + [v for v in value.split(";") if v and v not in items])
        else:
            merged[key] = value
    return merged


def session_options_for(manifest: dict, cpu: dict) -> tuple[dict, list[str]]:
    """(session config entries to apply on this CPU, sentences saying why), from the manifest's (or a file's
    metadata's) `session_options`: {CPU kind: {entry: value}}."""
    needed = manifest.get("session_options") or {}
    kinds = cpu_kinds(cpu)
    config, notes = {}, []
    for kind, entries in needed.items():
        if kind not in CPU_RULES:
            notes.append(f"the manifest names session options for {kind!r}, which this check.py does not know: not applied")
            continue
        if kind in kinds:
            config = merge_session_config(config, entries)
            why = "flags unreadable, so assumed" if not cpu.get("flags_known") else ("faked flags" if cpu.get("faked") else "from /proc/cpuinfo")
            notes.append(
                f"this CPU is {kind} ({why}): applying {', '.join(f'{k}={v}' for k, v in entries.items())}, which this "
                "file needs here; set the same session options in the device's own code"
            )
    return config, notes
