"""`edgekit bench`'s side-by-side output: ORT and OpenVINO per layer (--profile --runtimes ort,openvino) and the
closing line, the fastest runtime whose outputs pass."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from edgekit.cli.app import console, escape


def side_plots(result, first: Path, plot: Path | None) -> list[Path]:
    """One PNG per file profiled in both runtimes, beside the first file (or named after --plot)."""
    from edgekit.plots import plot_side_by_side

    written = []
    for name, sides in result.side_objects.items():
        if not sides.rows:
            continue
        stem = (plot or first.with_name(first.name.replace(".onnx", "") + ".profile.png")).with_suffix("")
        png = stem.with_name(f"{stem.name}.{name.replace('.onnx', '')}.ort-vs-openvino.png")
        written.append(plot_side_by_side(sides, png))
    return written


def render_side_by_side(result, top: int = 12) -> None:
    for name, sides in result.side_objects.items():
        table = Table(title=f"{escape(name)}: ORT vs OpenVINO per layer, same input, {sides.threads} threads "
                      f"(ms per run, median of {sides.runs}); where ORT loses most first")
        for column in ("OpenVINO layer", "ORT nodes", "ORT kernel", "ORT ms", "OpenVINO ms", "OpenVINO kernel",
                       "precision", "ORT - OpenVINO"):
            table.add_column(column, justify="right" if "ms" in column or "-" in column else "left")
        for r in sides.rows[:top]:
            table.add_row(escape(r.layer.removesuffix("/WithoutBiases")[-40:]), str(len(r.ort_nodes)), escape("+".join(r.ort_ops)) + f" ({r.ort_kind})",
                          f"{r.ort_ms:.3f}", f"{r.openvino_ms:.3f}", escape(r.openvino_kernel), r.openvino_precision,
                          f"{r.ort_loses_ms:+.3f}")
        table.add_row("[bold]all", str(sides.ort_nodes), "", f"{sides.ort_kernel_ms:.3f}", f"{sides.openvino_layer_ms:.3f}",
                      f"{sides.openvino_layers} layers", "", f"{sides.ort_kernel_ms - sides.openvino_layer_ms:+.3f}")
        console.print(table)
        for side, rows, what in (("ORT", sides.ort_unmatched, "op_type"), ("OpenVINO", sides.openvino_unmatched, "layer_type")):
            if rows:
                shown = ", ".join(f"{escape(u['name'])} ({u[what]}, {u['ms']:.3f} ms)" for u in rows[:5])
                more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
                console.print(f"not matched by name in {side}: {len(rows)} ({sum(u['ms'] for u in rows):.3f} ms): {shown}{more}")


def render_periodic(result) -> None:
    """--interval: each file paced, ORT with spinning off and on, OpenVINO beside them, with the CPU time spent."""
    if not result.periodic:
        return
    interval = result.periodic[0]["interval_ms"]
    table = Table(title=f"one call every {interval:g} ms, each setting paced on its own ({result.periodic[0]['frames']} frames)")
    for column in ("file", "runtime", "p50 ms", "p90 ms", "CPU ms/frame", "in the call", "between frames"):
        table.add_column(column, justify="left" if column in ("file", "runtime") else "right")
    for r in result.periodic:
        table.add_row(escape(r["file"]), r["label"], f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                      f"{r['cpu_ms_per_frame']:.2f}", f"{r['cpu_ms_in_call']:.2f}", f"{r['cpu_ms_between_frames']:.2f}")
    console.print(table)
    console.print("CPU ms: the process's user + system time (all threads, getrusage) per frame; between frames is what "
                  "an idle pool costs (spinning on: a core kept busy, spinning off: a slower wake-up)")


def render_verdict(result) -> None:
    from edgekit.bench.verdict import verdict_line

    for name, verdict in (result.verdict or {}).items():
        console.print(escape(verdict_line(name, verdict)), soft_wrap=True)  # one line, whatever the width
