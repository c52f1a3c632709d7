#!/usr/bin/env bash
# The CUDA checks, one short script for a machine with an NVIDIA GPU (what CI, without one, cannot run).
#
# Usage: benchmarks/cuda_checks.sh OUT_DIR [PYTHON]   (run from the repository root; PYTHON defaults to python3)
#
# Steps, each under its own time limit, every one run even when an earlier one failed:
#   env       the GPU, torch and ONNX Runtime versions, `proxyless-profiler info` (the backends this device offers)
#   tests     every test marked `cuda` (pytest -m cuda): torch-cuda timing with events, AMP steps, pinned batches,
#             deterministic CUDA searches, ORT's CUDA provider where it is installed
#   memory    -m benchmarks.memory --device cuda: peak GPU memory of one search step (compact, two-path, DARTS)
#   fidelity  -m benchmarks.fidelity --backend torch-cuda on proxyless-gpu (20 + 20 networks, 6 rounds)
#   e2e       a profiler served with --backends torch-cuda, `lut` of tiny-32, a search on digits with
#             --train-device cuda --amp against that table, `verify` of the derived network on the device
# OUT_DIR gets cuda_checks.log (every step's output, with its exit code and wall time) and the benchmarks' reports.
# Exit status: the number of steps that failed (0: every chosen step passed).
# CUDA_CHECKS_STEPS (default "env tests memory fidelity e2e") picks steps; CUDA_CHECKS_FIDELITY overrides the
# fidelity step's sample (default "--archs 20 --rounds 6").
set -u
STEPS=${CUDA_CHECKS_STEPS:-env tests memory fidelity e2e}
FIDELITY_SAMPLE=${CUDA_CHECKS_FIDELITY:---archs 20 --rounds 6}
OUT=${1:?usage: benchmarks/cuda_checks.sh OUT_DIR [PYTHON]}
PY=${2:-python3}
LOG="$OUT/cuda_checks.log"
WORK=$(mktemp -d)
FAILED=0
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT_S COMMAND...: run COMMAND under a time limit, append its output and exit code to LOG
    local name=$1 limit=$2 start rc
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    start=$(date +%s)
    echo "===== $name (limit ${limit} s): $*" >>"$LOG"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "===== $name: exit $rc in $(($(date +%s) - start)) s" | tee -a "$LOG"
    [ $rc = 0 ] || FAILED=$((FAILED + 1))
}

e2e() {  # serve torch-cuda, build the tiny-32 table, search on the GPU against it, verify on the device
    local port=8765 server line low high target rc=0
    local url="http://127.0.0.1:$port"
    "$PY" -m profiler_service.cli serve --db "sqlite:///$WORK/latency.db" --backends torch-cuda --port $port &
    server=$!
    "$PY" -c "import httpx, time
for _ in range(60):
    try:
        httpx.get('$url/v1/health').raise_for_status(); break
    except httpx.HTTPError:
        time.sleep(1)"
    "$PY" -m search_client.cli lut --space tiny-32 --device "$url" --backend torch-cuda --out "$WORK/tiny.lut.json" \
        | tee "$WORK/lut.txt" || rc=1
    line=$(grep -o 'min [0-9.]* ms, max [0-9.]* ms' "$WORK/lut.txt")
    low=$(echo "$line" | awk '{print $2}') high=$(echo "$line" | awk '{print $5}')
    target=$("$PY" -c "print(round(($low + $high) / 2, 4))")
    echo "target: $target ms (the middle of [$low, $high])"
    [ $rc = 0 ] && "$PY" -m search_client.cli search --table "$WORK/tiny.lut.json" --target-ms "$target" \
        --data digits --epochs 6 --warmup-epochs 2 --adaptive --train-device cuda --amp --out "$WORK/run" || rc=1
    [ $rc = 0 ] && "$PY" -m search_client.cli verify "$WORK/run/arch.json" --device "$url" \
        --table "$WORK/tiny.lut.json" || rc=1
    [ -f "$WORK/run/summary.json" ] && cat "$WORK/run/summary.json"
    kill $server
    wait $server
    return $rc
}

step env 30 bash -c "nvidia-smi -L; $PY -c 'import torch, onnxruntime as ort; print(\"torch\", torch.__version__, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no CUDA\"); print(\"ort\", ort.__version__, \
ort.get_available_providers())'; $PY -m profiler_service.cli info"
step tests 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts= --timeout 120 -m cuda \
    --continue-on-collection-errors -rA tests/nas_ops tests/latency_db tests/profiler_service tests/search_client
step memory 150 "$PY" -m benchmarks.memory --device cuda --out-dir "$OUT"
step fidelity 330 "$PY" -m benchmarks.fidelity --backend torch-cuda --space proxyless-gpu $FIDELITY_SAMPLE \
    --seed 1 --out-dir "$OUT"
export PY WORK
export -f e2e
step e2e 300 bash -c e2e
rm -rf "$WORK"
exit $FAILED
