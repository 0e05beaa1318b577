#!/usr/bin/env bash
# dgclab's GPU check (issue #20), prepared to run in one go on a machine with a CUDA GPU and its
# own Python, torch and Triton (possibly older than constraints.txt's pins), no copy of .venv and
# perhaps no network. It leaves the machine's torch alone, and writes one file per step to the
# results folder:
#
#   versions.txt        nvidia-smi, Python, torch, CUDA, Triton, the GPU
#   install.txt         pip install --no-deps --no-build-isolation -e . (else PYTHONPATH is used)
#   pytest-cuda.txt     every test marked cuda (the Triton kernel and the layer on the GPU)
#   bench-layer.txt     python -m dgclab.bench layer --device cuda (float32, float16, bfloat16)
#   bench-network-float16.txt / -float32.txt
#                       python -m dgclab.bench network --device cuda --dtype ...
#
# Usage: scripts/gpu_check.sh [RESULTS_DIR]   (default: $OUT where set, else gpu-check-results)
# Each step has its own time limit (about 12 minutes in all at most; a few minutes on an H200
# is expected) and a failing step does not stop the next. PYTHON picks the interpreter
# (default python3).
set -u
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-gpu-check-results}}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

step() {  # step NAME SECONDS COMMAND...: run it, log to RESULTS/NAME.txt, show its tail
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)"
    timeout "$limit" "$@" > "$RESULTS/$name.txt" 2>&1
    echo "exit status $?" >> "$RESULTS/$name.txt"
    tail -n 30 "$RESULTS/$name.txt"
}

step versions 60 bash -c "nvidia-smi; $PY - <<'PYEOF'
import sys, torch
print('python', sys.version.split()[0])
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())
try:
    import triton
    print('triton', triton.__version__)
except ImportError as error:
    print('triton: not importable:', error)
print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NONE VISIBLE')
PYEOF"

# No dependencies (the machine's torch stays) and no build isolation (no network to fetch
# setuptools into one); where that fails, the checkout itself goes on the path.
step install 180 "$PY" -m pip install --no-deps --no-build-isolation -e .
if ! "$PY" -c "import dgclab" > /dev/null 2>&1; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "   dgclab imported from the checkout (PYTHONPATH)"
fi

# Only the test files that hold cuda tests: the others import notebook-side packages (captum,
# ipywidgets) that a GPU machine may lack.
mapfile -t CUDA_TESTS < <(grep -rl "pytest.mark.cuda" tests --include='test_*.py' | sort)
step pytest-cuda 300 "$PY" -m pytest -m cuda -q -p no:cacheprovider "${CUDA_TESTS[@]}"
step bench-layer 180 "$PY" -m dgclab.bench layer --device cuda --rounds 30
for dtype in float16 float32; do
    step "bench-network-$dtype" 150 "$PY" -m dgclab.bench network --device cuda --dtype "$dtype" \
        --rounds 20 --train-rounds 10
done
echo "== done: $RESULTS"
