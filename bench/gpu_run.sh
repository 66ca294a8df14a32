#!/usr/bin/env bash
# Everything a GPU lease measures, in one call (the device tool's machine: Python 3.12 with torch 2.11,
# no network). Carry the wheels from ../shared/offline-wheels.sh as .whl. Each step has its own time limit and
# a failing step does not stop the others. Results go to $OUT/results.tar.gz, the log to $OUT/run.log.
#
#   device run:  bash bench/gpu_run.sh 1; then at once (same warm machine) bash bench/gpu_run.sh 2
#                (carry: [".whl"], timeout_s: 590): phase 1 = checkpoint, end-to-end benchmark, T3 benchmark;
#                phase 2 = GPU tests, S3Gen benchmark, server under load (reuses phase 1's checkpoint if present)
#   any CUDA host with the project installed:  OUT=var/gpu-run bash bench/gpu_run.sh
#   CPU smoke test of the script itself (tiny sizes, minutes):  SMOKE=1 OUT=var/gpu-smoke bash bench/gpu_run.sh
set -u
PHASE=${1:-all}
OUT=${OUT:-var/gpu-run}
RES=${RES:-/tmp/results}
mkdir -p "$OUT" "$RES"
exec > >(tee "$OUT/run.log") 2>&1
if [ "${SMOKE:-0}" != 1 ] && [ ! -d /tmp/site ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONWARNINGS=ignore
START=$(date +%s)
if [ "${SMOKE:-0}" = 1 ]; then
    SIZE=tiny DEVICE=cpu STREAMS=1,2 TOKENS=24 SESSIONS=1,2 T3_ARGS="--size tiny --device cpu --batches 1,2 --tokens 8"
    PY=${PY:-.venv/bin/python}
else
    SIZE=full DEVICE=cuda STREAMS=1,8,32,64 TOKENS=150 SESSIONS=1,4,16,32,64 T3_ARGS="--tokens 96"
    PY=${PY:-python3}
fi
CKPT=/tmp/ckpt-$SIZE

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep its log, never abort the script
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s, t=$(( $(date +%s) - START ))s)"
    timeout "$limit" "$@" > "$RES/$name.log" 2>&1
    echo "=== $name exit $? (t=$(( $(date +%s) - START ))s)"
    grep -v -i "warn\|deprecat" "$RES/$name.log" | tail -n "${TAIL:-25}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

phase() { [ "$PHASE" = all ] || [ "$PHASE" = "$1" ]; }
[ -f "$CKPT/conds.pt" ] || step checkpoint 150 $PY -m app.cli make-checkpoint --size $SIZE "$CKPT"
if phase 1; then
    TAIL=40 step e2e 230 $PY bench/benchmark.py --checkpoint "$CKPT" --device $DEVICE --streams $STREAMS \
        --tokens $TOKENS --repeats 1 --out "$RES/benchmark.json"
    step t3_bench 120 $PY bench/t3_decode_bench.py --modes eager,graphs,upstream $T3_ARGS --json "$RES/t3_bench.jsonl"
fi
if phase 2; then
    step gpu_tests 90 $PY -m pytest -q -p no:cacheprovider -m gpu -x tests/engine/test_t3_decoder.py \
        tests/engine/test_s3gen_streaming.py
    step s3gen_bench 90 $PY bench/s3gen_bench.py --checkpoint "$CKPT" --device $DEVICE --json "$RES/s3gen_bench.json"
    # The server under load: LLM-paced sessions over real WebSockets, ramped until the service level breaks.
    $PY -m app.cli serve --engine chatterbox --checkpoint "$CKPT" --port 8000 --voices-dir /tmp/voices \
        --synthetic-tokens-per-char 1.7 > "$RES/server.log" 2>&1 &
    SERVER=$!
    TAIL=30 step load 200 $PY -m load.loadtest --url ws://127.0.0.1:8000/v1/stream --sessions $SESSIONS \
        --replies 1 --reply-chars 240 --wait-ready-s 150 --out "$RES/load"
    curl -s localhost:8000/optimization-status > "$RES/optimization-status.json" 2>/dev/null
    kill -TERM $SERVER 2>/dev/null; sleep 3; kill -9 $SERVER 2>/dev/null
    grep -v -i "warn\|deprecat" "$RES/server.log" | tail -n 15
fi

tar -czf "$OUT/results-$PHASE.tar.gz" -C "$RES" .
echo "=== done in $(( $(date +%s) - START ))s"
