"""Export every registered model at its default size and report, per model, the time per stage and
ONNX Runtime's max abs diff vs PyTorch; for densenet121 and resnext50_32x4d, both exporters.

    .venv/bin/python benchmarks/export_report.py [--models a,b] [--out benchmarks/work/export-report]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BOTH_EXPORTERS = ("densenet121", "resnext50_32x4d")


def main(argv: list[str] | None = None) -> int:
    from edgekit.core.errors import EdgekitError
    from edgekit.export import export
    from edgekit.models import list_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(s.name for s in list_models()))
    args = parser.parse_args(argv)
    print("| model | exporter | opset | export s | simplify s | max abs vs PyTorch | top-1 agreement | note |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for exporter in ("torchscript", "dynamo") if name in BOTH_EXPORTERS else ("torchscript",):
                opset = 18 if exporter == "dynamo" else 17  # dynamo emits 18 whatever it is asked (refused at 17)
                try:
                    r = export(name, exporter=exporter, opset=opset, output=Path(tmp) / f"{name}-{exporter}.onnx")
                except EdgekitError as exc:
                    print(f"| {name} | {exporter} | {opset} | - | - | - | - | {exc} |", flush=True)
                    continue
                t = r.stage_seconds
                print(
                    f"| {name} | {exporter} | {opset} | {t.get('export', 0):.1f} | {t.get('simplify', 0):.1f} | "
                    f"{r.vs_torch.max_abs:.2e} | {r.vs_torch.top1_agreement:.0%} | {'; '.join(r.notes)} |",
                    flush=True,
                )
                (Path(tmp) / f"{name}-{exporter}.onnx").unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
