"""The PNG pictures edgekit draws: the per-layer int8 error along the network (verify --layers), the time per op
type or role (bench --profile) and a sweep's top-1 drop against latency with its Pareto frontier (sweep). matplotlib's object API with the Agg canvas (no pyplot, no display), written
through artifact.write_atomic like every other output."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.core.errors import BadInput

if TYPE_CHECKING:  # annotations only: plotting does not import the measurement
    from edgekit.layer_error import LayerReport

PLOT_LABELS = 3  # the worst activations labelled on the per-layer plot


def plot_layer_errors(report: LayerReport, png_path: Path, title: str) -> Path:
    """PNG of activation SQNR along the network's depth (fp32-graph node index), weights' SQNR as a
    second series, the few worst activations labelled and the most sensitive nodes ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no pyplot: no global backend state
    from matplotlib.figure import Figure

    png_path = Path(png_path)
    acts = sorted((a for a in report.activations if math.isfinite(a.sqnr_db)), key=lambda a: (a.position, a.tensor))
    weights = [w for w in report.weights if math.isfinite(w.sqnr_db) and w.role == "weight"]
    figure = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    ax.plot([a.position for a in acts], [a.sqnr_db for a in acts], "o-", ms=3.5, lw=1.2, color="tab:blue",
            label="activations: fp32 vs int8 (SQNR, dB)")
    sim = [(a.position, a.simulated_sqnr_db) for a in acts if math.isfinite(a.simulated_sqnr_db)]
    if sim and any(abs(a.sqnr_db - a.simulated_sqnr_db) > 0.05 for a in acts if math.isfinite(a.simulated_sqnr_db)):
        ax.plot(*zip(*sim), "--", lw=0.9, color="tab:gray", label="activations, QDQ in float (no CPU kernel loss)")
    if weights:
        ax.scatter([w.position for w in weights], [w.sqnr_db for w in weights], marker="s", s=14,
                   color="tab:orange", label="weights: fp32 vs dequantized (SQNR, dB)", zorder=3)
    sensitive = set(report.sensitive_nodes(PLOT_LABELS))
    ringed = [a for a in acts if a.fp32_node in sensitive]
    if ringed:
        ax.scatter([a.position for a in ringed], [a.sqnr_db for a in ringed], s=110, facecolors="none",
                   edgecolors="tab:red", linewidths=1.5, label="adds the most noise (sensitive_nodes)", zorder=4)
    for act in [a for a in report.worst(PLOT_LABELS) if math.isfinite(a.sqnr_db)]:
        label = act.fp32_node or act.tensor
        ax.annotate(label if len(label) <= 40 else "..." + label[-37:], (act.position, act.sqnr_db),
                    textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set_xlabel("depth (node index in the fp32 graph)")
    ax.set_ylabel("SQNR (dB), higher is better")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    figure.tight_layout()
    from edgekit.onnxfile.artifact import write_atomic

    return write_atomic(png_path, lambda f: figure.savefig(f, format="png"))


def plot_profiles(profiles: dict, png, *, top_ops: int = 12, by: str = "op") -> Path:
    """A PNG of ms per run per op type (`by="op"`) or per role (`by="role"`: conv, concat, convert,
    layout ..., where fp32 Conv and int8 QLinearConv share a group): one group of bars per op type
    (the `top_ops` largest, the rest as "(other)"), one bar per file, side by side in the order of
    `profiles`. Returns the path. `profiles`: label -> bench.profile.Profile (not imported: the profiler belongs to
    the bench stage, above this floor)."""
    # the object API with the Agg canvas: no pyplot, no global backend switch, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not profiles:
        raise BadInput("no profiles to plot")
    if by not in ("op", "role"):
        raise BadInput(f"by must be op or role, got {by!r}")
    png = Path(png)

    def times(p) -> dict[str, float]:
        return {o.op_type: o.ms for o in p.ops} if by == "op" else p.by_role()

    totals: dict[str, float] = defaultdict(float)
    for p in profiles.values():
        for key, ms in times(p).items():
            totals[key] += ms
    ordered = [op for op, _ in sorted(totals.items(), key=lambda kv: -kv[1])]
    shown, rest = ordered[:top_ops], ordered[top_ops:]
    labels = shown + (["(other)"] if rest else [])
    width = 0.8 / len(profiles)
    fig = Figure(figsize=(min(16.0, max(7.0, 1.5 + len(labels) * (0.35 + 0.22 * len(profiles)))), 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = np.arange(len(labels))
    for i, (label, p) in enumerate(profiles.items()):
        ms = times(p)
        heights = [ms.get(op, 0.0) for op in shown] + ([sum(ms.get(op, 0.0) for op in rest)] if rest else [])
        ax.bar(xs + (i - (len(profiles) - 1) / 2) * width, heights, width,
               label=f"{label} ({p.kernel_ms:.1f} ms/run)")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=35, ha="right")
    ax.set_ylabel("ms per run (ORT kernel time)")
    threads = {p.threads for p in profiles.values()}
    title = "Time per op type" if by == "op" else "Time per role"
    ax.set_title(title + (f", {threads.pop()} threads" if len(threads) == 1 else ""))
    ax.legend()
    fig.tight_layout()
    from edgekit.onnxfile.artifact import write_atomic

    return write_atomic(png, lambda f: fig.savefig(f, format="png", dpi=110))


def plot_pareto(rows: list, frontier: list, png_path: Path, title: str) -> Path:
    """PNG of each finished int8 file's top-1 drop against its latency (file size where latency was not
    measured): one point per file, marker area by file size, colour by model, each model's frontier drawn.
    `rows`, `frontier`: sweep.results.Row (not imported: the sweep imports plots, not the other way round)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = [r for r in rows if r.status == "ok" and r.drop is not None]
    timed = bool(done) and all(r.int8_p50_ms for r in done)
    x_of = (lambda r: r.int8_p50_ms) if timed else (lambda r: r.int8_bytes / 1e6)
    figure = Figure(figsize=(9, 5.5), dpi=110)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    largest = max(r.int8_bytes for r in done)
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(r.model for r in done))}
    runtimes = list(dict.fromkeys(getattr(r, "runtime", "ort") for r in done))  # a sweep's points are (file, runtime)
    for model, colour in colours.items():
        for i, runtime in enumerate(runtimes):  # marker shape by runtime
            mine = [r for r in done if r.model == model and getattr(r, "runtime", "ort") == runtime]
            ax.scatter([x_of(r) for r in mine], [r.drop for r in mine], s=[30 + 270 * r.int8_bytes / largest for r in mine],
                       color=colour, alpha=0.6, edgecolors="black", linewidths=0.5, marker="osD^v"[i % 5],
                       label=model + (f" in {runtime}" if len(runtimes) > 1 else ""))
    for model, colour in colours.items():
        line = [r for r in frontier if r.model == model]
        ax.plot([x_of(r) for r in line], [r.drop for r in line], "--", color=colour, lw=1.2)
        ax.scatter([x_of(r) for r in line], [r.drop for r in line], s=[60 + 270 * r.int8_bytes / largest for r in line],
                   facecolors="none", edgecolors="tab:red", linewidths=1.6, zorder=4)
    for r in frontier:  # only the frontier is labelled: the rest is in results.md
        ax.annotate(r.name.split("/", 1)[1], (x_of(r), r.drop), textcoords="offset points",
                    xytext=(6, 6), fontsize=7)
    ax.scatter([], [], s=60, facecolors="none", edgecolors="tab:red", linewidths=1.6,
               label="Pareto frontier (per model), labelled")
    ax.set_xlabel("int8 latency, p50 at batch 1 (ms), measured serially" if timed else "int8 file size (MB)")
    ax.set_ylabel("top-1 drop vs fp32 (points), lower is better")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="marker area: file size", title_fontsize=7)
    figure.tight_layout()
    from edgekit.onnxfile.artifact import write_atomic

    return write_atomic(Path(png_path), lambda f: figure.savefig(f, format="png"))


def plot_side_by_side(sides, png, *, top: int = 15) -> Path:
    """A PNG of ORT's and OpenVINO's ms per run on the same file, layer by layer (OpenVINO's fused layers, each
    with the ORT nodes matched to it): the `top` layers where ORT loses most, two bars each, the kernel OpenVINO
    ran beside the name. `sides`: a bench.layers.SideBySide (not imported: it belongs to the bench stage)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sides.rows[:top]
    if not rows:
        raise BadInput(f"no layer of {sides.file} matched between ORT and OpenVINO: nothing to plot")
    png = Path(png)
    fig = Figure(figsize=(10.0, max(3.5, 0.38 * len(rows) + 1.6)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = np.arange(len(rows))[::-1]
    ax.barh(ys + 0.2, [r.ort_ms for r in rows], 0.4, label=f"ORT ({sides.ort_kernel_ms:.2f} ms/run, all nodes)")
    ax.barh(ys - 0.2, [r.openvino_ms for r in rows], 0.4,
            label=f"OpenVINO ({sides.openvino_layer_ms:.2f} ms/run, all layers)")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r.layer.removesuffix('/WithoutBiases')[-34:]} [{r.openvino_kernel}]" for r in rows], fontsize=7)
    ax.set_xlabel("ms per run (median per layer)")
    ax.set_title(f"{Path(sides.file).name}: layers where ORT loses most, {sides.threads} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from edgekit.onnxfile.artifact import write_atomic

    return write_atomic(png, lambda f: fig.savefig(f, format="png", dpi=110))
