#!/usr/bin/env bash
# The GPU check of the VoxCeleb recipe: one command, at most 8 minutes of wall time.
#
#   bash bench/gpu_check.sh [OUT_DIR]               on a machine with an NVIDIA GPU and the venv
#   bash bench/gpu_check.sh --cpu-smoke [OUT_DIR]   every part at smoke size on the CPU (tests)
#                                                   (or GPU_CHECK_CPU_SMOKE=1)
# Parts, each time-boxed with `timeout` (a part that fails or runs out of time is recorded and
# the next one runs; none starts once the 8 minutes are spent):
#   env        nvidia-smi, torch / CUDA / faiss versions
#   gpu_tests  tests/test_augment.py, whose CPU-vs-CUDA augmentation test is the GPU-only one
#   train      bench/train_step.py at VoxCeleb shapes: ECAPA c1024; SSRL with 2 s augmented /
#              6 s clean crops, global batch 480 as ONE step (the training loop has no
#              micro-batching, and batch 480 fits one H100/H200), K = 8000; DINO batch 240;
#              fp32 against bf16 autocast; 8 loader workers; MFU against 989 TFLOP/s
#   kmeans     GPU k-means 1,092,009 x 512 -> 8000 (bench/cluster.py --skip-cpu), checked
#              against a CPU assignment to the same centroids
#   compile    the same SSRL step, bf16 + torch.compile
#   dataload   bench/dataload.py: the input pipeline with CPU vs GPU batch augmentation
#   workflow   the smoke workflow (config/smoke.yaml) on the GPU, in a copy under OUT_DIR
# Writes OUT_DIR/<part>.log, OUT_DIR/summary.md and OUT_DIR/summary.json (bench/gpu_summary.py)
# with the goals of issue 15: >= 30 % bf16 MFU for the SSRL step, k-means <= 60 s.
# Python: $PYTHON, else the repository's .venv/bin/python, else `python` on PATH.
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=gpu
if [[ "${1:-}" == "--cpu-smoke" ]]; then MODE=cpu-smoke; shift; fi
if [[ "${GPU_CHECK_CPU_SMOKE:-0}" == "1" ]]; then MODE=cpu-smoke; fi
OUT=$(mkdir -p "${1:-gpu_check}" && cd "${1:-gpu_check}" && pwd)
BUDGET=480        # seconds for all parts together
RESERVE=15        # kept for the summary
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python)
fi
BIN=$(dirname "$PY")
export PATH="$BIN:$PATH" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" REPO OUT PY BIN
unset MLFLOW_TRACKING_URI

if [[ $MODE == gpu ]] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA device visible to $PY (use --cpu-smoke to try the script on CPU)" >&2
    exit 2
fi

: > "$OUT/parts.tsv"
START=$SECONDS

# run_part NAME BUDGET_S COMMAND...: run COMMAND (a program or a function of this script) in
# the repository with its output in OUT/NAME.log, for at most BUDGET_S seconds and never past
# the overall budget.
run_part() {
    local name=$1 budget=$2
    shift 2
    local left=$((BUDGET - RESERVE - (SECONDS - START)))
    local limit=$((budget < left ? budget : left))
    if ((limit < 5)); then
        printf '%s\tskipped\t\t0\tno time left in the %s s budget\n' "$name" "$BUDGET" >> "$OUT/parts.tsv"
        return
    fi
    echo "gpu_check: $name (at most ${limit} s)"
    local t0=$SECONDS rc status
    if declare -F "$1" > /dev/null; then  # `timeout` runs programs: give it a shell for a function
        set -- bash -c "$(declare -f "$1"); $1 \"\$@\"" "$1" "${@:2}"
    fi
    (cd "$REPO" && timeout --kill-after=10 "$limit" "$@") > "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - t0))" "$name.log" >> "$OUT/parts.tsv"
}

skip_part() {  # skip_part NAME REASON
    printf '%s\tskipped\t\t0\t%s\n' "$1" "$2" >> "$OUT/parts.tsv"
}

env_report() {
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    else
        echo "nvidia-smi: not installed"
    fi
    echo "$(nproc) CPU cores"
    "$PY" - <<'EOF'
import faiss, torch
from ssrl.training.kmeans import faiss_gpu_available
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name(0) if cuda else 'none (CPU)'}, "
      f"faiss {faiss.__version__} ({'GPU' if faiss_gpu_available() else 'CPU only: k-means uses torch CUDA'})")
EOF
}

workflow() {  # the smoke workflow in a copy of the workflow files under OUT/workflow
    local dir="$OUT/workflow"
    rm -rf "$dir" && mkdir -p "$dir"
    # -L: workflow/schemas/config.schema.yaml links into ssrl/schema/ (copy the file itself)
    cp -rL "$REPO/Snakefile" "$REPO/workflow" "$REPO/config.yaml" "$REPO/config" "$REPO/envs" "$dir/"
    cd "$dir" && "$BIN/snakemake" --cores all --configfile config/smoke.yaml "$@"
}

# In order of priority: the parts with goals first; later parts get what time is left.
run_part env 20 env_report
run_part gpu_tests 45 "$PY" -m pytest -rs -p no:cacheprovider tests/test_augment.py
if [[ $MODE == gpu ]]; then
    run_part train 100 "$PY" bench/train_step.py --workers 8 --steps 5 --warmup 2
    run_part kmeans 75 "$PY" bench/cluster.py --skip-cpu --max-iter 30 --sk-n 20000
    run_part compile 120 "$PY" bench/train_step.py --workers 8 --steps 5 --warmup 3 \
        --compile --skip-dino
    run_part dataload 50 "$PY" bench/dataload.py --workers 8
    run_part workflow 150 workflow
else
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    run_part train 60 "$PY" bench/train_step.py --smoke --device cpu
    run_part kmeans 30 "$PY" bench/cluster.py --smoke
    skip_part compile "CPU smoke: torch.compile on a CPU takes minutes (docs/benchmarks.md)"
    run_part dataload 60 "$PY" bench/dataload.py --smoke --device cpu
    run_part workflow 60 workflow --dry-run
fi

"$PY" "$REPO/bench/gpu_summary.py" "$OUT" --mode "$MODE" --seconds "$((SECONDS - START))" \
    --budget "$BUDGET" --repo "$REPO"
