#!/usr/bin/env bash
# The parity harness, our side: compose-retrieval's paper recipe for a fixed number of steps on a
# CSS folder of flat 2D drawings (make-css output), then recall@1/5/10 on its test split.
#
#   bash benchmarks/parity/run_ours.sh                      # 1,000 steps, seed 0, the default folder
#   STEPS=3000 SEEDS="0 1 2" bash benchmarks/parity/run_ours.sh
#   bash benchmarks/parity/run_ours.sh --mods-per-source 1  # extra arguments go to `train` (an ablation)
#
# DATA (default runs/parity/css2d) is made with `data make-css --style 2d --train-scenes 1000` when
# it does not exist: 6,000 training images, 2,000 test queries against a 2,400-image gallery.
# google/tirg's own code is run on the same folder outside this repository: see README.md here.
set -euo pipefail
cd "$(dirname "$0")/../.."
CR=${CR:-.venv/bin/compose-retrieval}
DATA=${DATA:-runs/parity/css2d}
OUT=${OUT:-runs/parity}
STEPS=${STEPS:-1000}
SEEDS=${SEEDS:-0}
TAG=${TAG:-paper}

if [ ! -f "$DATA/css_toy_dataset_novel2_small.dup.npy" ]; then
  "$CR" data make-css --out "$DATA" --style 2d --train-scenes 1000
fi
mkdir -p "$OUT"
for seed in $SEEDS; do
  run="$OUT/$TAG-steps$STEPS-seed$seed"
  command=("$CR" train --combiner tirg --dataset css --data-root "$DATA" --recipe paper --steps "$STEPS"
           --seed "$seed" --run-dir "$run" --no-progress "$@")
  echo "+ ${command[*]}"
  /usr/bin/time -f "%e s wall" "${command[@]}"
  "$CR" evaluate "$run" --data-root "$DATA" --json > "$run/eval.json"
  python3 - "$run/eval.json" "${command[*]}" >> "$OUT/parity.md" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"| {m['recall@1']:.4f} | {m['recall@5']:.4f} | {m['recall@10']:.4f} | `{sys.argv[2]}` |")
PY
done
echo "results: $OUT/parity.md (recall@1 | recall@5 | recall@10 | command)"
