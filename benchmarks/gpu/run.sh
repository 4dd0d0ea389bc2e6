#!/usr/bin/env bash
# Every GPU figure of issues 5 and 6 in two commands on a lent GPU machine (see README "GPU run").
#
#   bash benchmarks/gpu/run.sh 1   # start-up, encode, generate (batch 1 and 4, with --low-vram)
#   bash benchmarks/gpu/run.sh 2   # back ends (SDPA / xformers / torch.compile), training memory
#   bash benchmarks/gpu/run.sh 1 --tiny   # the same steps on the CPU with the tiny models (a dry run)
#
# JSON and a log go to $OUT (the device tool's folder that comes back; default
# benchmarks/results). The real-size models are built once into $ELITE_BENCH_MODELS
# (default /tmp/elite-bench) and reused by part 2 while the machine stays warm.
# Each step has its own time limit (STEP_LIMIT seconds, default 420), so one slow step still
# leaves the others' JSON.
set -uo pipefail
cd "$(dirname "$0")/../.."
PART="${1:-1}"
SIZE="${2:---real}"
if [[ "$PART" != [12] || ( "$SIZE" != --real && "$SIZE" != --tiny ) ]]; then
    echo "usage: bash benchmarks/gpu/run.sh 1|2 [--tiny]"
    exit 2
fi
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run-$PART.log") 2>&1
PYTHON="${PYTHON:-python3}"
if [ "$SIZE" = "--tiny" ]; then
    PLACE=(--device cpu --dtype float32)
else
    PLACE=(--device cuda --dtype float16)
fi

if ! "$PYTHON" -c "import diffusers, sqlite_utils, typer, platformdirs" 2>/dev/null; then
    [ -d .whl ] || { echo "missing packages and no .whl/ folder: run benchmarks/gpu/fetch-wheels.sh here first"; exit 1; }
    "$PYTHON" -m pip install --quiet --no-index --find-links .whl diffusers==0.42.1 sqlite-utils typer==0.29.2 platformdirs || exit 1
fi
"$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PYTHON" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
export ELITE_BENCH_MODELS="${ELITE_BENCH_MODELS:-/tmp/elite-bench}"

step() {
    local name=$1
    shift
    local started=$SECONDS
    echo "== $name: $*"
    timeout "${STEP_LIMIT:-420}" "$PYTHON" "$@" --json "$OUT/$name.json"
    echo "== $name: exit $? after $((SECONDS - started)) s"
}

case "$PART" in
    1)
        step startup benchmarks/startup.py "$SIZE" "${PLACE[@]}"
        step encode benchmarks/encode.py "$SIZE" "${PLACE[@]}"
        step generate benchmarks/generate.py "$SIZE" "${PLACE[@]}" --low-vram --runs 3 --warmup 1
        ;;
    2)
        step backends benchmarks/backends.py "$SIZE" "${PLACE[@]}" --runs 3 --warmup 1
        if [ "$SIZE" = "--tiny" ]; then
            step train benchmarks/train_bench.py --tiny --device cpu
        else
            # The issue-5 target (global, 512 px, batch 4 in 24 GB) and its neighbours, kept short
            # so part 2 fits the device time left after part 1.
            step train benchmarks/train_bench.py --real --steps 6 --warmup 2 \
                --variants global-4-fp16,global-4-fp16-ckpt,global-4-bf16,local-4-fp16
        fi
        ;;
esac
