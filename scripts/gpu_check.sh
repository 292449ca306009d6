#!/usr/bin/env bash
# GPU check: export resnet18, resnext50_32x4d and densenet121 at 224, quantize one, and verify every
# file on CUDA and CPU against PyTorch. Meant for a fresh GPU machine with this checkout and its .venv;
# about 2-5 minutes. Results (reports, logs, summary.md) go to $OUT if set, else ./gpu-check.
#
#   scripts/gpu_check.sh            # exit 0: all verified; 1: a gate failed; 3: no GPU / no .venv
set -euo pipefail

cd "$(dirname "$0")/.."
RESULTS="${OUT:-./gpu-check}"
# The lent GPU machines have their own python3 with torch and onnx but no onnxruntime-gpu or onnxsim,
# and a .venv (5.5 GB) cannot travel there: point PYTHON/EDGEKIT at an environment that has them.
PYTHON="${PYTHON:-.venv/bin/python}"
EDGEKIT="${EDGEKIT:-$PYTHON -m edgekit}"
MODELS=(resnet18 resnext50_32x4d densenet121)
QUANTIZE_MODEL=resnet18

fail() { echo "gpu_check: $1" >&2; exit "${2:-3}"; }

command -v "$PYTHON" >/dev/null 2>&1 || [[ -x "$PYTHON" ]] || fail "$PYTHON not found: run \`make setup\` (or set PYTHON=...) first"
command -v nvidia-smi >/dev/null 2>&1 || fail "nvidia-smi not found: this machine has no NVIDIA driver/GPU"
mkdir -p "$RESULTS/models"

echo "== nvidia-smi"
nvidia-smi | tee "$RESULTS/nvidia-smi.txt" || fail "nvidia-smi failed: no usable NVIDIA GPU"

echo "== versions"
"$PYTHON" - <<'PY' | tee "$RESULTS/versions.txt"
import sys
import onnx, onnxruntime as ort, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "| CUDA runtime", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
print("onnx", onnx.__version__, "| onnxruntime", ort.__version__, "| providers", ", ".join(ort.get_available_providers()))
PY
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" \
  || fail "torch sees no CUDA device (torch.cuda.is_available() is False)"

start=$SECONDS
status=0
files=()
for model in "${MODELS[@]}"; do
  echo "== export $model (224)"
  t=$SECONDS
  $EDGEKIT export "$model" --input-size 224 -o "$RESULTS/models/$model.onnx" >"$RESULTS/export-$model.log" 2>&1 \
    || { echo "export $model failed (see $RESULTS/export-$model.log)"; tail -3 "$RESULTS/export-$model.log"; status=1; continue; }
  echo "   $((SECONDS - t)) s"
  files+=("$RESULTS/models/$model.onnx")
done

if $EDGEKIT quantize --help >/dev/null 2>&1 && [[ -f "$RESULTS/models/$QUANTIZE_MODEL.onnx" ]]; then
  echo "== quantize $QUANTIZE_MODEL"
  t=$SECONDS
  if $EDGEKIT quantize "$RESULTS/models/$QUANTIZE_MODEL.onnx" -o "$RESULTS/models/$QUANTIZE_MODEL.int8.onnx" \
      >"$RESULTS/quantize-$QUANTIZE_MODEL.log" 2>&1; then
    files+=("$RESULTS/models/$QUANTIZE_MODEL.int8.onnx")
    echo "   $((SECONDS - t)) s"
  else
    echo "quantize failed (see $RESULTS/quantize-$QUANTIZE_MODEL.log)"; tail -3 "$RESULTS/quantize-$QUANTIZE_MODEL.log"; status=1
  fi
else
  echo "== quantize: \`edgekit quantize\` not available; skipped"
fi

for file in "${files[@]}"; do
  name=$(basename "$file" .onnx)
  echo "== verify $name on cpu,cuda"
  t=$SECONDS
  rc=0
  $EDGEKIT verify "$file" --providers cpu,cuda --report "$RESULTS/verify-$name.json" >"$RESULTS/verify-$name.log" 2>&1 || rc=$?
  echo "   exit $rc, $((SECONDS - t)) s"
  if [[ $rc -ne 0 ]]; then
    tail -2 "$RESULTS/verify-$name.log"
    [[ $status -eq 0 || $rc -gt $status ]] && status=$rc
  fi
done

echo "== summary ($((SECONDS - start)) s after the checks started)"
"$PYTHON" - "$RESULTS" <<'PY' | tee "$RESULTS/summary.md"
import json, sys
from pathlib import Path

results = Path(sys.argv[1])
print("| file | precision | runtime | inputs | batch | max abs | SQNR dB | top-1 agr. | nodes run (provider: count) | result |")
print("|---|---|---|---|--:|--:|--:|--:|---|---|")
for report in sorted(results.glob("verify-*.json")):
    data = json.loads(report.read_text())
    nodes = {p["requested"]: p for p in data["providers"]}
    for c in data["comparisons"]:
        m = c["outputs"][0]
        placement = nodes.get(c["provider"], {}).get("node_counts", {}) if c["runtime"] == "onnxruntime" else {}
        where = ", ".join(f"{k}: {v}" for k, v in sorted(placement.items())) or "-"
        sqnr = m["sqnr_db"] if isinstance(m["sqnr_db"], str) else f"{m['sqnr_db']:.1f}"
        result = "info" if not c["gated"] else ("PASS" if c["passed"] else "FAIL: " + "; ".join(c["failures"]))
        runtime = f"{c['runtime']} {c['provider']}" + ("" if c["ran_on"] == c["provider"] else f" -> {c['ran_on']}")
        print(f"| {Path(data['file']).name} | {data['precision']} | {runtime} | {c['input_set']} | {c['batch']} | "
              f"{m['max_abs']:.2e} | {sqnr} | {m['top1_agreement']:.0%} | {where} | {result} |")
PY
exit "$status"
