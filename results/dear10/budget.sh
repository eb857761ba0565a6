#!/usr/bin/env bash
# The DEAR-10 study's budget question (PROTOCOL.md, "Budget study"): MST-Prim
# at 3000 and 10000 training steps; the 1000-step runs are the study's own.
# Resumable: rerun to continue; finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
for steps in 3000 10000; do
  python -m baselines.compare --preset=dear10-cpu --quiet --no_memory \
      --out="results/dear10/budget/steps$steps" --train_steps="$steps" \
      --algorithms=mst_prim --models=dear,dear_paper,nar_lt --seeds=2 \
      --config.dear.check_graphs=256
done
