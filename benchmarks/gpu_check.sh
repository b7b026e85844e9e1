#!/usr/bin/env bash
# The GPU check: one command for a machine with an NVIDIA GPU (at most about 8 minutes on one GPU).
#   bash benchmarks/gpu_check.sh                       # cuda, 400 steps per mode, fp32 / bf16 / bf16+compile
#   bash benchmarks/gpu_check.sh --nproc 2             # and bf16 under DDP on two GPUs
#   bash benchmarks/gpu_check.sh --device cpu --steps 5 --dataset-opt train_scenes=32 --dataset-opt test_scenes=8
# Uses the Python that has compose_retrieval installed ($PYTHON, else .venv/bin/python, else python3); a machine
# without network gets the package itself installed without dependencies (torch, timm, ... must be there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if ! "$PYTHON" -c "import compose_retrieval_recipes" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e .
fi
"$PYTHON" - <<'PY'
import torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, GPUs: {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
PY
exec "$PYTHON" benchmarks/gpu_check.py "$@"
