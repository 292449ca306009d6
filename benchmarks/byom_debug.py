"""`edgekit debug` on the bring-your-own-model corpus, under the gates a trained model gets.

benchmarks/byom.py imports the corpus with `--untrained`: random weights, the loose random-weight gates, every file
passes, and debug has nothing to find. Here each file is made the way a user's file with unknown weights is:
imported WITHOUT `--untrained` (judge/compare.py `weights_of_file`: "weights unknown: an imported file" -> the
trained-weight gates, 95 % top-1 agreement and 12 dB SQNR; a dense output: 12 dB SQNR only), and the user's
module exported with `--weights` (its own init saved as a state dict: "trained weights (a weights file)"). The
weights are still random, so this exercises debug's localisation on real graphs; it says nothing about accuracy.

Per file, through the real CLI, one file at a time:
  1. import (or export --weights) -> fp32 file, trained-weight gates;
  2. quantize --no-fallback --min-agreement 0 --min-sqnr 0: the int8 file is written whatever its accuracy (quantize's
     own held-out gate is switched off so that a failing file exists; the file's gates are still the trained ones,
     from its weights, which is what verify and debug read);
  3. verify INT8 --random-inputs 0 (the bundled photos, the trained gates) and debug INT8 --reduce --json;
  4. where it fails: quantize again with one --exclude per name of debug's list, and verify that file under the same
     gates: the list is usable iff that passes.

    python -m benchmarks.byom_debug [--only mobilenet_v3_small,Paddle] [--device-on mobilenet_v3_small]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.byom import EDGEKIT, _run, corpus, makers  # noqa: E402

SMALL_FIRST = ("mobilenet_v3_small", "Paddle-style", "shufflenet_v2_x1_0", "regnet_y_400mf", "view+Linear",
               "dense output", "user module", "dynamo")
SECTION = "## debug under trained gates"

def _json_of(step: dict) -> dict | None:
    try:
        return json.loads(step.get("stdout") or "")
    except ValueError:
        return None


def _quantize_args(dense: bool) -> list[str]:
    """quantize's own held-out gate off (the file is written whatever its accuracy); no fallback."""
    return ["--no-fallback", "--min-sqnr", "0"] + ([] if dense else ["--min-agreement", "0"])


def _metric(m: dict | None, dense: bool = False) -> str:
    if not m:
        return "-"
    top1 = None if dense else m.get("top1_agreement")  # a dense output's top-1 is shown nowhere: never gated
    return f"{m['sqnr_db']:.1f} dB" + ("" if top1 is None else f", {top1:.0%}")


def one_file(name: str, item: dict, work: Path, device: bool) -> dict:
    """Steps 1-4 for one corpus file: the row of the table, with every command's exit and first line."""
    out = work / "out"
    out.mkdir(parents=True)
    steps: list[dict] = []
    row: dict = {"model": name, "steps": steps}
    if item["import"] is None:  # the user's module, exported with its weights as a file (trained gates)
        import torch

        spec = f"{item['source']}:build"
        sys.path.insert(0, str(item["source"].parent))
        import mynet  # noqa: F401 - written by foreign_models.user_module_source

        weights = work / "mynet.pt"
        torch.save(mynet.build().state_dict(), weights)
        fp32 = out / "mynet.onnx"
        steps.append(_run([*EDGEKIT, "export", spec, "--weights", weights, "--input-size", "64", "-o", fp32], work))
        model_args = ["--model", spec]
    else:
        fp32 = out / f"{item['source'].stem}.onnx"
        options = [o for o in item["import"] if o != "--untrained"]
        steps.append(_run([*EDGEKIT, "import", item["source"], *options, "-o", fp32], work))
        model_args = []
    dense = "dense" in name
    int8 = out / f"{fp32.stem}.int8.onnx"
    steps.append(_run([*EDGEKIT, "quantize", fp32, *_quantize_args(dense), "-o", int8], work))
    if steps[-1]["exit"] != 0:
        row["error"] = steps[-1]["said"]
        return row
    steps.append(_run([*EDGEKIT, "verify", int8, *model_args, "--random-inputs", "0"], work))
    row["verify_exit"] = steps[-1]["exit"]
    steps.append(_run([*EDGEKIT, "debug", int8, "--reduce", "-o", out / "reduced", "--json"], work, keep_stdout=True))
    found = _json_of(steps[-1])
    if found is None:
        row["error"] = steps[-1]["said"]
        return row
    groups = found["groups"]
    row.update(gates=found["gates"].replace(str(ROOT) + "/", ""), before=found["before"], fails=not found["passed_as_is"], groups=groups,
               bound=round(math.log2(groups) + 3, 1), runs=found["runs"],
               steps_runs={s["step"]: s["runs"] for s in found["steps"]}, exclude=found["exclude"],
               culprits=[c.get("index") for c in found["culprits"]], after=found["after"], notes=found["notes"],
               reduced=(found["reduced"] or {}).get("nodes"))
    if not row["fails"]:
        return row
    again = out / f"{fp32.stem}.excluded.int8.onnx"
    excludes = [a for n in found["exclude"] for a in ("--exclude", n)]
    steps.append(_run([*EDGEKIT, "quantize", fp32, *_quantize_args(dense), *excludes, "-o", again], work))
    if steps[-1]["exit"] == 0:
        steps.append(_run([*EDGEKIT, "verify", again, *model_args, "--random-inputs", "0"], work))
        row["requantized_verify_exit"] = steps[-1]["exit"]
        steps.append(_run([*EDGEKIT, "debug", again, "--json"], work, keep_stdout=True))
        second = _json_of(steps[-1])
        row["requantized"] = second["before"] if second else None
    else:
        row["requantized_verify_exit"] = None
        row["error"] = steps[-1]["said"]
    row["usable"] = row.get("requantized_verify_exit") == 0
    if device:
        steps.append(_run([*EDGEKIT, "debug", int8, "--device", "arm64-a76", "--json"], work, timeout=3600,
                          keep_stdout=True))
        on_device = _json_of(steps[-1])
        row["device"] = None if on_device is None else {
            "device": "arm64-a76", "fails": not on_device["passed_as_is"], "runs": on_device["runs"],
            "exclude": on_device["exclude"], "before": on_device["before"], "after": on_device["after"]}
    return row


def table(rows: list[dict]) -> str:
    head = ("| file | int8 vs fp32 parent (SQNR, top-1 agreement) | gates | fails? | debug runs | groups G | "
            "log2(G)+3 | exclude list | re-quantized with --exclude | passes? | reduce nodes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "before" not in r:
            lines.append(f"| {r['model']} | error: {r.get('error', '?')} | | | | | | | | | |")
            continue
        gates = "SQNR >= 12 dB" if "dense" in r["model"] else "agreement >= 95 %, SQNR >= 12 dB"
        if not r["fails"]:
            lines.append(f"| {r['model']} | {_metric(r['before'], 'dense' in r['model'])} | {gates} | no (verify exit {r['verify_exit']}) | "
                         f"{r['runs']} | {r['groups']} | {math.log2(r['groups']) + 3:.1f} | - | - | - | - |")
            continue
        passes = {True: "yes", False: "no"}[r["usable"]] + (f" (verify exit {r['requantized_verify_exit']})"
                                                               if r.get("requantized_verify_exit") is not None else "")
        lines.append(f"| {r['model']} | {_metric(r['before'])} | {gates} | yes (verify exit {r['verify_exit']}) | "
                     f"{r['runs']} | {r['groups']} | {math.log2(r['groups']) + 3:.1f} | {len(r['exclude'])} names, "
                     f"{len(r['culprits'])} groups | {_metric(r.get('requantized'))} | {passes} | "
                     f"{r['reduced'] if r['reduced'] is not None else 'none written'} |")
    return "\n".join(lines) + "\n"


def write_section(out: Path, body: str) -> None:
    """Replace (or append) the section in BYOM.md; the rest of the page is left as it is."""
    text = out.read_text() if out.is_file() else ""
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    out.write_text(text)


def section(rows: list[dict], names: list[str]) -> str:
    """The BYOM.md section: how the files were judged, the table, what was left out, the device and --reduce rows."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU")
    done = {r["model"] for r in rows}
    left = [n for n in names if n not in done]
    text = [SECTION, "",
            f"Measured on {cpu} (AVX-512 VNNI, AMX), 2 cores shared with other work; reproduced by "
            "`python -m benchmarks.byom_debug --only NAMES [--device-on NAME]` (results in "
            "`benchmarks/byom_results.json`, key `debug`). Each corpus file is imported WITHOUT `--untrained` "
            "(`weights_of_file`: \"weights unknown: an imported file\"; the user's module is exported with `--weights`, "
            "its own init saved as a state dict), so the trained-weight gates apply: top-1 agreement >= 95 % and "
            "SQNR >= 12 dB against the fp32 parent in ONNX Runtime on the 12 bundled photos (a dense output: SQNR "
            "only). quantize runs with `--no-fallback --min-agreement 0 --min-sqnr 0` so that a failing int8 file is "
            "written at all; verify and debug then judge it by its weights' gates. The weights are random: this "
            "exercises debug's localisation on real graphs; it says nothing about accuracy. A list is usable when "
            "`quantize --exclude` with it (the same recipe) gives a file that `verify` passes under the same gates.",
            "", table(rows)]
    for r in rows:
        if r.get("device"):
            d = r["device"]
            text.append(f"`debug --device {d['device']}` on {r['model']} (int8 on the emulated device's kernels): "
                        + (f"fails as it is ({_metric(d['before'])}); {d['runs']} runs, exclude list of "
                           f"{len(d['exclude'])} names; with it {_metric(d['after'])}" if d["fails"] else
                           f"passes as it is ({_metric(d['before'])})") + ".\n")
    failing = [r for r in rows if r.get("fails") and "steps_runs" in r]
    if failing:
        text.append("ORT runs per step of each failing file (log2(G)+3 bounds a single culprit group; a failure spread "
                    "over several groups takes the second bisection and the drop pass too):\n")
        text.extend(f"- {r['model']}: " + ", ".join(f"{k} {v}" for k, v in r["steps_runs"].items())
                    + f" ({r['runs']} in all" + ("; the drop pass stopped at its run limit with some groups untried"
                                                 if any("limit" in n for n in r["notes"]) else "") + ")"
                    for r in failing)
        text.append("")

        def why(r: dict) -> str:
            note = next((n for n in r["notes"] if n.startswith("--reduce")), "")
            inner = note[note.find("(") + 1:note.rfind(")")] if "(" in note else note
            return inner.split("; nothing written")[0].rstrip(")").replace("that gate", "the subgraph's SQNR gate")

        text.append("`--reduce` ran on every failing file: " + "; ".join(
            f"{r['model']}: " + (f"a subgraph of {r['reduced']} nodes" if r["reduced"] is not None
                                 else f"nothing written ({why(r)})") for r in failing) + ".\n")
    if left:
        text.append("Not run (time, on a shared machine): " + ", ".join(left) + ".\n")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SMALL_FIRST[:4]),
                        help="comma-separated substrings of corpus names (default: the four smallest)")
    parser.add_argument("--device-on", default=None, help="a substring of a failing file's name: the first such file "
                        "is debugged again with --device arm64-a76 (emulated: slow)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "byom_results.json")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "BYOM.md", help="the page whose section "
                        f"{SECTION!r} is written (the rest of the page is kept)")
    parser.add_argument("--table-only", action="store_true", help="rewrite the section from --results, run nothing")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    done = {r["model"]: r for r in results.get("debug", [])}
    with tempfile.TemporaryDirectory(prefix="edgekit-byom-debug-") as tmp:
        tmp = Path(tmp)
        items = {} if args.table_only else corpus(tmp, args.only)
        for index, (name, item) in enumerate(items.items()):  # one file at a time: the machine is shared
            work = tmp / "work" / str(index)
            work.mkdir(parents=True)
            device = bool(args.device_on) and args.device_on in name and not any(r.get("device") for r in done.values()
                                                                               if r["model"] != name)
            row = one_file(name, item, work, device)
            for s in row["steps"]:
                s.pop("stdout", None)
            done[name] = row
            print(f"{name:<55} fails {row.get('fails')} runs {row.get('runs')} G {row.get('groups')} "
                  f"exclude {len(row.get('exclude') or [])} usable {row.get('usable')} {row.get('error', '')}",
                  flush=True)
            results["debug"] = list(done.values())
            args.results.write_text(json.dumps(results, indent=1) + "\n")
    write_section(args.out, section(list(done.values()), list(makers())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
