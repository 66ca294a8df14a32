#!/usr/bin/env bash
# Everything a GPU lease measures, in one call, most important first (the device tool's machine: Python 3.12
# with torch 2.11, no network; a lease is about 15 minutes including the machine's start). Carry the wheels from
# ../shared/offline-wheels.sh as .whl. Every step gets its own limit, cut to what is left of DEADLINE seconds;
# a failing step does not stop the others, a step with under 20 s left is skipped. Results go to
# $OUT/results.tar.gz, the log to $OUT/run.log.
#
#   device run:  bash bench/gpu_run.sh   (carry: [".whl"], timeout_s: 590; DEADLINE defaults to 560)
#   any CUDA host with the project installed:  OUT=var/gpu-run DEADLINE=1800 bash bench/gpu_run.sh
#   CPU smoke test of the script itself (tiny sizes, minutes):  SMOKE=1 OUT=var/gpu-smoke bash bench/gpu_run.sh
#
# Order: checkpoints (standard, turbo); correctness (GPU tests); end to end against upstream generate (turbo,
# then standard); a turbo server under load; T3 decode (kernel count, CUDA graphs, eager, upstream); S3Gen
# (bf16 + graphs, fp32 eager); a standard server under load; multilingual end to end; T3 under torch.compile (inductor kernels inside our
# CUDA graphs, to keep the faster).
set -u
OUT=${OUT:-var/gpu-run}
RES=${RES:-/tmp/results}
DEADLINE=${DEADLINE:-560}
mkdir -p "$OUT" "$RES"
exec > >(tee "$OUT/run.log") 2>&1
START=$(date +%s)
if [ "${SMOKE:-0}" != 1 ] && [ ! -d /tmp/site ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONWARNINGS=ignore
if [ "${SMOKE:-0}" = 1 ]; then
    SIZE=tiny DEVICE=cpu STREAMS=1,2 TOKENS=24 SESSIONS=1,2
    T3_ARGS="--size tiny --device cpu --batches 1,2 --tokens 8" S3_ARGS="--random tiny --device cpu --streams 1,2"
    S3_MODES=eager:float32 T3_MODES=kernels,eager,upstream
    PY=${PY:-.venv/bin/python}
else
    SIZE=full DEVICE=cuda STREAMS=1,8,64 TOKENS=100 SESSIONS=1,8,32,64
    T3_ARGS="--tokens 96" S3_ARGS="--random full --device cuda --streams 1,8"
    S3_MODES=graphs:bfloat16,eager:float32 T3_MODES=kernels,graphs,eager,upstream
    PY=${PY:-python3}
fi
CKPT=/tmp/ckpt-$SIZE
TURBO=/tmp/ckpt-turbo-$SIZE
MTL=/tmp/ckpt-multilingual-$SIZE

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }

step() {  # step NAME SECONDS COMMAND...: run with a limit (cut to the time left), keep its log, never abort
    local name=$1 limit=$2; shift 2
    local remaining; remaining=$(left)
    [ "$remaining" -lt "$limit" ] && limit=$remaining
    if [ "$limit" -lt 20 ]; then echo "=== $name skipped: ${remaining}s left"; return; fi
    echo "=== $name (limit ${limit}s, t=$(( $(date +%s) - START ))s)"
    timeout "$limit" "$@" > "$RES/$name.log" 2>&1
    echo "=== $name exit $? (t=$(( $(date +%s) - START ))s)"
    grep -v -i "warn\|deprecat" "$RES/$name.log" | tail -n "${TAIL:-25}"
}

serve_and_load() {  # serve_and_load MODEL: the server under load, LLM-paced sessions over real WebSockets, ramped
    local model=$1
    $PY -m app.cli serve --engine chatterbox --models "$model" --checkpoint "$CKPT" --turbo-checkpoint "$TURBO" \
        --port 8000 --voices-dir /tmp/voices --synthetic-tokens-per-char 1.7 > "$RES/server-$model.log" 2>&1 &
    local server=$!
    TAIL=30 step "load-$model" 150 $PY -m load.loadtest --url ws://127.0.0.1:8000/v1/stream --sessions $SESSIONS \
        --replies 1 --reply-chars 240 --wait-ready-s 100 --out "$RES/load-$model"
    curl -s localhost:8000/optimization-status > "$RES/optimization-status-$model.json" 2>/dev/null
    kill -TERM $server 2>/dev/null; sleep 3; kill -9 $server 2>/dev/null
    grep -v -i "warn\|deprecat" "$RES/server-$model.log" | tail -n 15
}

[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

[ -f "$CKPT/conds.pt" ] || step checkpoint 120 $PY -m app.cli make-checkpoint --size $SIZE "$CKPT"
[ -f "$TURBO/conds.pt" ] || step checkpoint-turbo 90 $PY -m app.cli make-checkpoint --model turbo --size $SIZE "$TURBO"
[ "$DEVICE" = cuda ] && step gpu_tests 60 $PY -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_t3_decoder.py \
    tests/engine/test_s3gen_streaming.py tests/engine/test_t3_turbo.py tests/engine/test_s3gen_meanflow.py
# Turbo first: the model made for voice agents, and the one never measured yet.
TAIL=40 step e2e-turbo 150 $PY bench/benchmark.py --checkpoint "$TURBO" --device $DEVICE --streams $STREAMS \
    --tokens $TOKENS --repeats 1 --out "$RES/benchmark-turbo.json"
TAIL=40 step e2e 150 $PY bench/benchmark.py --checkpoint "$CKPT" --device $DEVICE --streams $STREAMS \
    --tokens $TOKENS --repeats 1 --out "$RES/benchmark.json"
serve_and_load turbo
step t3_bench 80 $PY bench/t3_decode_bench.py --modes $T3_MODES $T3_ARGS --json "$RES/t3_bench.jsonl"
step s3gen_bench 90 $PY bench/s3gen_bench.py $S3_ARGS --modes $S3_MODES --tokens 200 --repeats 1 --skip sweep \
    --json "$RES/s3gen_bench.json"
serve_and_load standard
[ -f "$MTL/conds.pt" ] || step checkpoint-multilingual 90 $PY -m app.cli make-checkpoint --model multilingual \
    --size $SIZE "$MTL"
TAIL=40 step e2e-multilingual 150 $PY bench/benchmark.py --checkpoint "$MTL" --device $DEVICE --streams $STREAMS \
    --tokens $TOKENS --repeats 1 --out "$RES/benchmark-multilingual.json"
[ "$DEVICE" = cuda ] && step t3_compile 120 $PY bench/t3_decode_bench.py --modes compile --compile-mode default \
    $T3_ARGS --json "$RES/t3_bench.jsonl"

tar -czf "$OUT/results.tar.gz" -C "$RES" .
echo "=== done in $(( $(date +%s) - START ))s"
