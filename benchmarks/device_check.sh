#!/usr/bin/env bash
# ragrt on one NVIDIA GPU, in one go (at most ~8 minutes including installs):
#   1. installs ragrt with onnxruntime-gpu + faiss-gpu into its own venv (never next to the CPU
#      onnxruntime / faiss-cpu);
#   2. CUDA and TensorRT parity (tests/test_device.py: fp32 tokens identical to the CPU, fp16
#      agreement floor) and FAISS search on the GPU against the CPU;
#   3. the headline benchmark on --device cuda (ragrt fp32, fp16 with IO binding, against
#      transformers and optimum on the same GPU), and the same with TensorRT;
#   4. JSON + SUMMARY.md for each, and summary.md / summary.json over all steps, into OUT_DIR.
#
# Usage: benchmarks/device_check.sh OUT_DIR [--dry-run] [--venv DIR] [--wheels DIR]
#                                           [--no-install] [--skip-tensorrt] [--budget S]
#   --dry-run      print the plan and exit 0 (no GPU, nothing installed; CI runs this)
#   --venv DIR     virtual environment to create/use (default .venv-gpu)
#   --wheels DIR   install offline from a folder of wheels (machines without a registry)
#   --no-install   use the current python as it is (onnxruntime-gpu already there)
#   --skip-tensorrt  CUDA only
#   --budget S     seconds for the whole run (default 480); each step gets a share
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

OUT="" DRY=0 VENV=".venv-gpu" WHEELS="" INSTALL=1 TRT=1 BUDGET=480
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --venv) [ $# -ge 2 ] || die "--venv needs a folder"; VENV="$2"; shift ;;
        --wheels) [ $# -ge 2 ] || die "--wheels needs a folder of wheels"; WHEELS="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --skip-tensorrt) TRT=0 ;;
        --budget)
            [ $# -ge 2 ] || die "--budget needs seconds"
            case "$2" in ''|*[!0-9]*) die "--budget must be whole seconds, got '$2'" ;; esac
            BUDGET="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$OUT" ] || die "one OUT_DIR only (got '$OUT' and '$1')"; OUT="$1" ;;
    esac
    shift
done
[ -n "$OUT" ] || die "give an output folder: benchmarks/device_check.sh OUT_DIR (see --help)"
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || [ "$DRY" = 1 ] || die "--wheels $WHEELS is not a folder"

# The GPU venv gets ragrt without its CPU onnxruntime/faiss dependencies, then the GPU builds.
GPU_DEPS=(onnxruntime-gpu faiss-gpu-cu12 "numpy>=1.24,<2" "tokenizers>=0.19" "tqdm>=4.60"
    "tritonclient[http,grpc]>=2.40" "transformers>=4.45,<4.58" optimum-onnx onnx
    onnxconverter-common pytest matplotlib)
[ "$TRT" = 1 ] && GPU_DEPS+=(tensorrt-cu12)
PY="$VENV/bin/python"
[ "$INSTALL" = 1 ] || PY="$(command -v python3)"
BENCH_ARGS=(--device cuda --sizes bart-base --batch-sizes 1,16 --n-docs 5 --num-beams 1
    --new-tokens 32 --repeats 2 --questions 4 --warmup 1 --no-plots)
STEPS=(install parity bench-cuda)
[ "$TRT" = 1 ] && STEPS+=(bench-tensorrt)
STEPS+=(summary)

plan() {
    echo "device check plan (budget ${BUDGET}s, output $OUT):"
    if [ "$INSTALL" = 1 ]; then
        echo "  install: python3 -m venv --system-site-packages $VENV; pip install -e . --no-deps;"
        echo "           pip install ${WHEELS:+--no-index --find-links $WHEELS }${GPU_DEPS[*]}"
    else
        echo "  install: skipped (--no-install): $PY as it is"
    fi
    echo "  parity:  $PY -m pytest -m gpu tests/test_device.py (CUDA/TensorRT fp32 identical, fp16 floor, GPU index)"
    echo "  bench-cuda: $PY -m ragrt bench ${BENCH_ARGS[*]} --out $OUT/bench-cuda"
    [ "$TRT" = 1 ] && echo "  bench-tensorrt: ... --tensorrt --systems ragrt-fp32,ragrt-fp16 --out $OUT/bench-tensorrt"
    echo "  summary: $OUT/summary.json and $OUT/summary.md"
}

if [ "$DRY" = 1 ]; then
    plan
    exit 0
fi

mkdir -p "$OUT" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
command -v nvidia-smi >/dev/null || die "no nvidia-smi: this is not an NVIDIA GPU machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.csv" \
    || die "nvidia-smi found no GPU"
plan | tee "$OUT/plan.txt"
START=$(date +%s)
declare -A RESULT SECONDS_TAKEN

left() { echo $((BUDGET - ($(date +%s) - START))); }
step() {  # step NAME SHARE_OF_REMAINING_PERCENT command...
    local name="$1" share="$2"; shift 2
    local t0 limit rc
    limit=$(($(left) * share / 100))
    if [ "$limit" -lt 20 ]; then
        RESULT[$name]="skipped (budget spent)"; echo "== $name: skipped, budget spent"; return
    fi
    echo "== $name (up to ${limit}s)"
    t0=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    SECONDS_TAKEN[$name]=$(($(date +%s) - t0))
    case $rc in
        0) RESULT[$name]="ok" ;;
        124) RESULT[$name]="timed out after ${limit}s" ;;
        *) RESULT[$name]="failed (exit $rc)" ;;
    esac
    echo "   ${RESULT[$name]} in ${SECONDS_TAKEN[$name]}s (log: $OUT/$name.log)"
}

install() {
    python3 -m venv --system-site-packages "$VENV" || return 1
    local pipflags=(-q)
    [ -n "$WHEELS" ] && pipflags+=(--no-index --find-links "$WHEELS")
    "$PY" -m pip install "${pipflags[@]}" -e . --no-deps || return 1
    "$PY" -m pip install "${pipflags[@]}" "${GPU_DEPS[@]}" || return 1
    "$PY" - <<'EOF'
import onnxruntime as ort
have = ort.get_available_providers()
print("onnxruntime", ort.__version__, have)
assert "CUDAExecutionProvider" in have, "onnxruntime has no CUDA provider"
EOF
}

if [ "$INSTALL" = 1 ]; then step install 40 install; else RESULT[install]="skipped"; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
step parity 35 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_device.py \
    --junitxml "$OUT/parity.xml"
if [ "${RESULT[parity]}" = ok ] && ! grep -q " passed" "$OUT/parity.log"; then
    RESULT[parity]="failed (every GPU test skipped: see parity.log)"
fi
step bench-cuda 60 "$PY" -m ragrt bench "${BENCH_ARGS[@]}" --out "$OUT/bench-cuda" \
    --cache "$OUT/.cache"
if [ "$TRT" = 1 ]; then
    step bench-tensorrt 90 "$PY" -m ragrt bench "${BENCH_ARGS[@]}" --tensorrt \
        --systems ragrt-fp32,ragrt-fp16 --out "$OUT/bench-tensorrt" --cache "$OUT/.cache"
fi

{
    echo "# ragrt device check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "GPU: $(tail -n +2 "$OUT/gpu.csv")"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    for s in "${STEPS[@]}"; do
        [ "$s" = summary ] && continue
        echo "| $s | ${RESULT[$s]:-not run} | ${SECONDS_TAKEN[$s]:--} |"
    done
    echo
    grep -E "passed|failed|skipped" "$OUT/parity.log" 2>/dev/null | tail -n 3 | sed 's/^/    /'
    for b in bench-cuda bench-tensorrt; do
        [ -f "$OUT/$b/SUMMARY.md" ] && { echo; echo "## $b"; sed -n '/^## Targets/,/^## bart-large/p' "$OUT/$b/SUMMARY.md"; }
    done
} >"$OUT/summary.md"
"${PY}" - "$OUT" "${STEPS[@]}" <<EOF || true
import json, sys
out, steps = sys.argv[1], sys.argv[2:]
res = {$(for s in "${STEPS[@]}"; do printf '"%s": ["%s", "%s"], ' "$s" "${RESULT[$s]:-not run}" "${SECONDS_TAKEN[$s]:-}"; done)}
json.dump({k: {"result": v[0], "seconds": v[1]} for k, v in res.items() if k != "summary"},
          open(out + "/summary.json", "w"), indent=1)
EOF
cat "$OUT/summary.md"
for s in "${STEPS[@]}"; do
    case "${RESULT[$s]:-ok}" in ok|skipped) ;; *) exit 1 ;; esac
done
exit 0
