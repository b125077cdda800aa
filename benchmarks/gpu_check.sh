#!/usr/bin/env bash
# One check of a CUDA machine for this project, with torch (torchvision, numpy, scikit-learn) only:
# no Prefect, MLflow or DVC needed. From the repository root, in under 5 minutes:
#
#   bash benchmarks/gpu_check.sh [--cpu] [--no-compile] [--epochs N | --seconds S] [--skip-tests]
#                                [--warmup N] [--samples N] [--batch-size N]
#
#   1. the machine: GPU name, memory, compute capability; torch, CUDA, cuDNN, triton versions; CPU
#   2. the CUDA tests (tests/unit/test_cuda.py) if pytest is installed, else says why they were skipped
#   3. images/s of the cifar10 preset's Retrain recipe in unlearn.train.fit (ResNet-18, batch 256,
#      bf16 autocast + channels_last, data resident on the GPU), eager and torch.compile'd (compile
#      time reported apart), against a DataLoader(TensorDataset) loop of the same model and batch,
#      on CIFAR-shaped random data: medians of timed epochs after a warm-up, and the ratios
#   4. each one's projected wall time of the cifar10 Retrain (182 epochs over 45,000 images)
#
# --cpu runs the same path on the CPU with tiny sizes and no compile (to test the script where
# there is no GPU). Without CUDA and without --cpu it exits 2 with one line. Exit 1 when the CUDA
# tests or the measurement failed. PYTHON=/path/to/python picks the interpreter (default: .venv's
# if there is one, else python3). The measurement is `train_throughput.py --gpu-check`.
set -uo pipefail

usage() { sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0"; }

cd "$(dirname "$0")/.." || exit 1
root=$PWD

cpu="" tests=1 measure_args=()
while (($#)); do
    case $1 in
    -h | --help) usage && exit 0 ;;
    --cpu) cpu=--cpu && measure_args+=(--cpu) ;;
    --skip-tests) tests=0 ;;
    --no-compile) measure_args+=("$1") ;;
    --epochs | --seconds | --warmup | --samples | --batch-size)
        (($# >= 2)) || { echo "gpu_check: $1 needs a value" >&2 && exit 64; }
        measure_args+=("$1" "$2") && shift ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2 && exit 64 ;;
    esac
    shift
done

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3 || command -v python); fi
fi
if [[ -z $PYTHON ]] || ! command -v "$PYTHON" >/dev/null; then
    echo "gpu_check: no python found (set PYTHON=/path/to/python)" >&2
    exit 2
fi

cores=$(nproc 2>/dev/null || echo 1)
export PYTHONUNBUFFERED=1
# The DataLoader loop and the step launches use few CPU threads; more only spin (benchmarks/machine.py).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cores > 8 ? 8 : cores))}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
measure=("$PYTHON" benchmarks/train_throughput.py --gpu-check)

# Torch and CUDA first: without them, one line and nothing else.
machine=$("${measure[@]}" --machine-only ${cpu:+"$cpu"} 2>&1)
rc=$?
if ((rc == 2)); then
    echo "$machine" >&2
    exit 2
elif ((rc)); then
    echo "gpu_check: $PYTHON cannot run the check (exit $rc): ${machine##*$'\n'}" >&2
    exit 2
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "no git")
echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit, $PYTHON, OMP_NUM_THREADS=$OMP_NUM_THREADS${cpu:+, CPU path (--cpu)}"
echo "== 1. machine"
echo "$machine"
if [[ -z $cpu ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv,noheader |
        sed 's/^/nvidia-smi: /'
fi

failed=()
echo "== 2. CUDA tests (tests/unit/test_cuda.py)"
if ((!tests)); then
    echo "skipped: --skip-tests"
elif ! "$PYTHON" -c "import pytest" 2>/dev/null; then
    echo "skipped: pytest is not installed for $PYTHON (pip install pytest to run them)"
else
    # tests/conftest.py imports only os, tempfile, pytest and torch at its top (the MLOps fixtures
    # import lazily); no plugin autoload keeps stray plugins of this environment out of the run.
    started=$SECONDS
    if PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PYTHON" -m pytest -q -p no:cacheprovider tests/unit/test_cuda.py; then
        echo "CUDA tests: pytest exit 0 in $((SECONDS - started)) s"
    else
        failed+=("CUDA tests")
    fi
fi

echo "== 3. trainer throughput, 4. Retrain projection"
started=$SECONDS
"${measure[@]}" ${measure_args[@]+"${measure_args[@]}"} || failed+=("measurement (exit $?)")
echo "measurement took $((SECONDS - started)) s"

if ((${#failed[@]})); then
    echo "== gpu_check FAILED: ${failed[*]}"
    exit 1
fi
echo "== gpu_check done in ${SECONDS} s"
