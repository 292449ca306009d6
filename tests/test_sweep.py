"""edgekit sweep: rows, columns and the Pareto frontier from a local 2-worker Ray instance; a failing job becomes a row;
a worker killed mid-sweep is retried; a resume runs no job twice; bad input is exit 2 with nothing written.

The Ray runs keep every socket on loopback: they run in a network namespace of their own (`unshare -n`, only `lo`
up), where Ray binds 127.0.0.1 alone; where no namespace can be made (not root) they are skipped with the reason.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CALIBRATION, ROOT, files_in
from tests.sweep_faults import COMMAND as WITH_FAULTS, FAULTS_ENV, environment as faults_env

pytest.importorskip("ray", reason="edgekit[sweep] (Ray) is not installed")

EDGEKIT = [sys.executable, "-m", "edgekit"]


def _netns_ok() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare/ip are not installed"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot make a network namespace here: {probe.stderr.strip()[:120]}"


NO_NETNS = _netns_ok()


def in_netns(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`edgekit ARGS` in a network namespace with only loopback up (with faults: through tests/sweep_faults.py)."""
    command = WITH_FAULTS if env and FAULTS_ENV in env else EDGEKIT
    argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *command, *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A small labelled set of real photos: 3 classes of 4 (random weights: the numbers are structure, not accuracy)."""
    root = tmp_path_factory.mktemp("labelled")
    photos = sorted(p for p in CALIBRATION.iterdir() if p.suffix in (".jpg", ".png"))[:12]
    for i, photo in enumerate(photos):
        folder = root / f"class{i % 3}"
        folder.mkdir(exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    return root


def _args(out: Path, labelled: Path, calibration: Path) -> list[str]:
    # (calibrated from a .npz of the photos: every file meets its budget without a fallback search, which
    # textbook_resnext's x86-avx2 job otherwise runs for 4-6 s)
    return ["sweep", "--models", "textbook_densenet,textbook_resnext", "--targets", "x86-avx2,x86-vnni",
            "--methods", "minmax", "--samples", "8", "--input-size", "32", "--dataset", str(labelled),
            "--calibration", str(calibration), "--workers", "2", "-o", str(out), "--json"]


def _frontier(rows: list[dict]) -> set[str]:
    """The Pareto frontier recomputed here, by its definition: per model, no other file with both a lower or equal
    latency and a lower or equal drop, one of them strictly lower."""
    done = [r for r in rows if r["status"] == "ok"]
    out = set()
    for r in done:
        beaten = any(o["model"] == r["model"] and o is not r and o["int8_p50_ms"] <= r["int8_p50_ms"]
                     and o["drop"] <= r["drop"] and (o["int8_p50_ms"] < r["int8_p50_ms"] or o["drop"] < r["drop"])
                     for o in done)
        if not beaten:
            out.add(r["name"])
    return out


@pytest.mark.skipif(NO_NETNS is not None, reason=NO_NETNS or "")
def test_sweep_on_local_ray_rows_failures_retries_and_resume(tmp_path, labelled, calibration_npz):
    out = tmp_path / "sweep"
    calibration = calibration_npz(32)
    faults = {"crash_once": "textbook_densenet/x86-avx2", "fail": "textbook_resnext/x86-vnni",
              "marker_dir": str(tmp_path)}
    first = in_netns(_args(out, labelled, calibration), faults_env(faults))
    assert first.returncode == 1, first.stderr[-2000:]  # one job failed: its row says why, the rest is there
    assert first.stderr.strip().splitlines() == ["1 of 4 jobs failed; their rows say why"]  # nothing from Ray
    result = json.loads(first.stdout)
    rows = {r["name"]: r for r in result["rows"]}
    assert len(rows) == 4 and result["cluster"].startswith("2 worker(s) x 1 thread(s) on a local Ray instance")
    failed = rows["textbook_resnext/x86-vnni/minmax/8"]
    assert failed["status"] == "failed" and "injected failure" in failed["error"] and "\n" not in failed["error"]
    # the worker that died (os._exit) mid-job: Ray ran its task again, and the row is complete
    assert (tmp_path / "crashed-textbook_densenet_x86-avx2").is_file()
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == 3
    for r in ok:
        assert r["images"] == 12 and 0 <= r["int8_top1"] <= 100 and r["fp32_top1"] is not None
        assert r["int8_p50_ms"] > 0 and r["fp32_p50_ms"] > 0 and Path(r["file"]).is_file()
        assert r["drop"] == pytest.approx(r["fp32_top1"] - r["int8_top1"])
    # x86-vnni ran the same rewritten graph as x86-avx2: its activation ranges came from the cache
    assert rows["textbook_densenet/x86-vnni/minmax/8"]["ranges_cached"] is True
    assert rows["textbook_densenet/x86-avx2/minmax/8"]["ranges_cached"] is False

    saved = json.loads((out / "results.json").read_text())
    assert set(saved["frontier"]) == _frontier(saved["rows"])
    assert saved["cpu"]["kind"] and saved["versions"]["onnxruntime"]
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {"model", "target", "drop", "int8_p50_ms", "size_ratio", "error"} <= set(table[0])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "textbook_resnext/x86-vnni" not in "".join(saved["frontier"])
    assert (out / "sweep.yaml").is_file() and (out / "results.md").read_text().count("| textbook_") == 4

    # resume: the three finished rows are read back, only the failed job runs again
    second = in_netns(_args(out, labelled, calibration))
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads(second.stdout)
    assert again["jobs_run"] == 1
    cached = {r["name"]: r["cached"] for r in again["rows"]}
    assert cached == {name: name != "textbook_resnext/x86-vnni/minmax/8" for name in rows}
    for r in again["rows"]:
        if r["name"] in ok:
            assert r["int8_top1"] == rows[r["name"]]["int8_top1"]
    # and once more: nothing runs, Ray is not even started
    third = in_netns(["sweep", "--file", str(out / "sweep.yaml"), "-o", str(out), "--json"])
    assert third.returncode == 0, third.stderr[-2000:]
    done = json.loads(third.stdout)
    assert done["jobs_run"] == 0 and done["cluster"].startswith("none") and all(r["cached"] for r in done["rows"])


def test_sweep_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, labelled, cli):
    out = tmp_path / "out"
    base = ["sweep", "--dataset", str(labelled), "--input-size", "32", "-o", str(out)]
    cases = {
        "unknown model": (["--models", "resnet9000"], "unknown model 'resnet9000'"),
        "empty list": (["--models", "textbook_densenet", "--targets", ","], "targets"),
        "unknown target": (["--models", "textbook_densenet", "--targets", "x86-avx3"], "unknown target"),
        "bad samples": (["--models", "textbook_densenet", "--samples", "0"], "samples"),
    }
    for name, (extra, words) in cases.items():
        result = cli(*base, *extra)
        assert result.exit_code == 2, (name, result.output)
        assert words in result.stderr and len(result.stderr.strip().splitlines()) <= 2, (name, result.stderr)
        assert not out.exists(), name
    bad = tmp_path / "sweep.toml"
    bad.write_text("models = [textbook_densenet\n")  # not TOML
    result = cli("sweep", "--file", str(bad), "-o", str(out))
    assert result.exit_code == 2 and "is not valid TOML" in result.stderr
    missing = cli("sweep", "--file", str(tmp_path / "nope.yaml"), "-o", str(out))
    assert missing.exit_code == 2 and "cannot be read" in missing.stderr
    assert not out.exists()

    # more classes than the model has outputs: found after the (staged) export, before anything is written
    many = tmp_path / "many"
    for i in range(11):
        (many / f"c{i:02d}").mkdir(parents=True)
        shutil.copy(CALIBRATION / "coffee.jpg", many / f"c{i:02d}" / "coffee.jpg")
    digits = ROOT / "benchmarks" / "reference" / "textbook_densenet-digits.safetensors"
    result = cli("sweep", "--models", "textbook_densenet", "--weights", f"textbook_densenet={digits}",
                 "--input-size", "32", "--resize", "32", "--dataset", str(many), "-o", str(out))
    assert result.exit_code == 2 and "has 11 classes but textbook_densenet has 10 outputs" in result.stderr
    assert not out.exists() and not [n for n in files_in(tmp_path) if n.startswith(".edgekit-sweep-")]


def test_sweep_without_ray_is_exit_3(tmp_path, labelled, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = cli("sweep", "--models", "textbook_densenet", "--dataset", str(labelled), "-o", str(tmp_path / "o"))
    assert result.exit_code == 3 and "pip install 'edgekit[sweep]'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_pareto_frontier_and_best_per_model():
    from edgekit.sweep.results import Row, best_per_model, pareto_frontier

    def row(model, target, ms, top1, size=100):
        return Row(model, target, "minmax", 8, key=target, status="ok", fp32_top1=90.0, int8_top1=top1, int8_p50_ms=ms,
                   int8_bytes=size)

    rows = [row("a", "t1", 1.0, 89.0), row("a", "t2", 2.0, 89.5), row("a", "t3", 3.0, 89.2), row("a", "t4", 0.5, 80.0),
            row("b", "t1", 9.0, 70.0), Row("a", "t5", "minmax", 8, key="x", status="failed", error="boom")]
    frontier = [r.target for r in pareto_frontier(rows) if r.model == "a"]
    assert frontier == ["t4", "t1", "t2"]  # t3 is slower and worse than t2
    assert [r.model for r in pareto_frontier(rows)].count("b") == 1  # b is not hidden by a's faster files
    best = best_per_model(rows, max_drop=1.0)
    assert best["a"].target == "t1" and best["b"] is None
    assert best_per_model(rows, None)["a"].target == "t2"


@pytest.mark.skipif(NO_NETNS is not None, reason=NO_NETNS or "")
def test_ctrl_c_keeps_the_finished_rows_and_exits_130(tmp_path, labelled):
    import signal
    import time

    out = tmp_path / "sweep"
    faults = {"stall": "textbook_resnext", "marker_dir": str(tmp_path)}  # resnext's job is still running at Ctrl-C
    args = ["sweep", "--models", "textbook_densenet,textbook_resnext", "--targets", "x86-avx2", "--samples", "8",
            "--input-size", "32", "--dataset", str(labelled), "--no-latency", "--workers", "2", "-o", str(out)]
    argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *WITH_FAULTS, *args]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **faults_env(faults)})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            entries = [json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")] if (out / "jobs").is_dir() else []
            if any(e.get("model") == "textbook_densenet" for e in entries):  # densenet's row is finished
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)  # sh exec'd python: the signal reaches edgekit
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: 1 of 2 rows finished, kept in" in " ".join(stderr.split())
    saved = json.loads((out / "results.json").read_text())
    assert saved["interrupted"] is True
    status = {r["model"]: r["status"] for r in saved["rows"]}
    assert status == {"textbook_densenet": "ok", "textbook_resnext": "interrupted"}


def test_sweep_knobs_are_quantizes_own_bad_values_are_one_line_exit_2(tmp_path, labelled, cli):
    """--sweep and --set take any quantize knob, bounded by the knob itself (one bound: core/knobs.knob_range)."""
    from edgekit.core.knobs import knob_range
    from edgekit.quantize.options import QuantizeOptions
    from edgekit.sweep.spec import SweepSpec

    low, high = knob_range(QuantizeOptions, "max_drop")
    field = SweepSpec.model_fields["max_drop"].metadata  # the best-file budget: the same bound
    assert {getattr(m, "ge", None) for m in field} - {None} == {low} and {getattr(m, "le", None) for m in field} - {None} == {high}
    out = tmp_path / "out"
    base = ["sweep", "--models", "textbook_densenet", "--dataset", str(labelled), "--input-size", "32", "-o", str(out)]
    cases = {
        "out of the knob's range": (["--sweep", f"max_drop=0.5,{high + 1:g}"], f"max_drop must be {low:g} to {high:g}"),
        "not a number": (["--sweep", "max_drop=a"], "max_drop = 'a'"),
        "samples below its knob": (["--sweep", "samples=0"], "samples must be 1 to"),
        "unknown knob": (["--sweep", "speed=1,2"], "'speed' is not a quantize knob"),
        "the sweep's own": (["--set", "output=x.onnx"], "output is the sweep's own"),
        "fixed and swept": (["--set", "max_drop=1", "--sweep", "max_drop=2"], "max_drop is given to both"),
        "swept twice": (["--methods", "minmax", "--sweep", "method=entropy"], "method is swept twice"),
        "a value twice": (["--sweep", "per_channel=true,1"], "a value given twice"),
        "not KNOB=V": (["--sweep", "max_drop"], "is not KNOB=VALUE"),
        "unknown runtime": (["--runtimes", "ort,tvm"], "unknown runtime 'tvm'"),
    }
    for name, (extra, words) in cases.items():
        result = cli(*base, *extra)
        assert result.exit_code == 2, (name, result.output)
        assert words in result.stderr and len(result.stderr.strip().splitlines()) <= 2, (name, result.stderr)
        assert "Traceback" not in result.output and not out.exists(), name
    sweep_file = tmp_path / "sweep.toml"  # the same rules in a sweep file
    sweep_file.write_text(f'models = ["textbook_densenet"]\ndataset = "{labelled}"\n[sweep]\nrewrites = [true, "maybe"]\n')
    result = cli("sweep", "--file", str(sweep_file), "-o", str(out))
    assert result.exit_code == 2 and "rewrites = 'maybe'" in result.stderr and not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(NO_NETNS is not None, reason=NO_NETNS or "")
def test_sweep_of_max_drop_in_two_runtimes_shows_each_points_fp32_groups(tmp_path, labelled):
    """--sweep max_drop (the fallback, forced here by a 35 dB SQNR gate the full int8 file misses) x --runtimes
    ort,openvino: one quantize per file, a row per (file, runtime) with the fallback's fp32 groups, quantize's
    measured drop, and top-1 and latency measured in that runtime."""
    pytest.importorskip("openvino")
    out = tmp_path / "sweep"
    digits = ROOT / "benchmarks" / "reference" / "textbook_resnext-digits.safetensors"
    args = ["sweep", "--models", "textbook_resnext", "--weights", f"textbook_resnext={digits}", "--targets", "x86-vnni",
            "--samples", "8", "--input-size", "32", "--resize", "32", "--dataset", str(labelled),
            "--sweep", "max_drop=50,100", "--set", "min_sqnr=35", "--runtimes", "ort,openvino", "--workers", "2",
            "-o", str(out), "--json"]
    done = in_netns(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "note: quantize's max_drop budget is measured on --dataset" in done.stderr
    result = json.loads(done.stdout)
    rows = {r["name"]: r for r in result["rows"]}
    base = "textbook_resnext/x86-vnni/minmax/8"
    assert set(rows) == {f"{base}/max_drop={d}{rt}" for d in (50, 100) for rt in ("", "@openvino")}
    assert result["jobs_run"] == 4  # two quantizations (each file once for both runtimes), two fp32 top-1s
    for name, r in rows.items():
        assert r["status"] == "ok" and r["runtime"] == ("openvino" if name.endswith("@openvino") else "ort")
        assert r["knobs"] == {"max_drop": float(name.split("max_drop=")[1].split("@")[0])}
        assert 0 < r["fp32_groups"] < r["groups"]  # the 35 dB gate needed the fallback, not everything back in fp32
        assert r["quantize_drop"] is not None and r["quantize_drop"] <= r["knobs"]["max_drop"]
        assert r["int8_p50_ms"] > 0 and r["fp32_p50_ms"] > 0 and r["images"] == 12
        twin = rows[name.removesuffix("@openvino") if name.endswith("@openvino") else name + "@openvino"]
        assert twin["file"] == r["file"] and twin["fp32_groups"] == r["fp32_groups"]  # the same file in both
    assert len({r["file"] for r in rows.values()}) == 2
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {t["runtime"] for t in table} == {"ort", "openvino"} and {t["knobs"] for t in table} == {"max_drop=50", "max_drop=100"}
    assert all(t["fp32_groups"] for t in table)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml_keys(out / "sweep.yaml") >= {"sweep", "quantize", "runtimes"}


def yaml_keys(path: Path) -> set[str]:
    import yaml

    return set(yaml.safe_load(path.read_text()))
