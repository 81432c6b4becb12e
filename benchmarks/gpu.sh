#!/usr/bin/env bash
# The Unlearn-Sparse CIFAR-10 ResNet-18 suite on one GPU (config: src/unlearnkit/bench/configs/unlearn-sparse-gpu.yaml):
# original + retrain oracles from scratch on all 50,000 images, class 0 and random 10% forgetting, retrain, FT, GA,
# RL, l1-sparse, SalUn and the seed methods; bf16 autocast, channels_last, images kept on the GPU.
#   bash benchmarks/gpu.sh [OUT] [--data-root DIR]      (cifar10_jpeg.npz from DIR, ./data or ../shared/data)
# TIME_LIMIT (seconds, default 570) stops the run cleanly before a 10-minute command limit; run the same command
# again to resume from the cache (finished trainings and method runs are kept). Exit 0: complete; 1: some runs
# failed (listed); 124: time limit reached, run again; 2: usage error.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/unlearn-sparse-gpu}
shift || true
export UNLEARNKIT_MIXED_PRECISION=${UNLEARNKIT_MIXED_PRECISION:-bf16} UNLEARNKIT_QUIET=${UNLEARNKIT_QUIET:-1}
PY=${PYTHON:-python3}
if ! "$PY" -c "import unlearnkit" 2>/dev/null; then export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU (use benchmarks/gpu_bench.py --tiny on a CPU)')" || exit 2
timeout --signal=INT "${TIME_LIMIT:-570}" "$PY" benchmarks/gpu_bench.py --out "$OUT" --device cuda "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ]; then
  echo "time limit reached: finished runs are cached in $OUT; run the same command again to resume" >&2
  exit 124
fi
exit "$rc"
