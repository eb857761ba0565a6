#!/usr/bin/env bash
# The DEAR-10 study's n=512 tests (PROTOCOL.md, amendment of 2026-12-06):
# each finished seed-0 run of the four algorithms, from its best parameters.
# Resumable: a size already written is skipped; runs not finished yet wait.
set -euo pipefail
cd "$(dirname "$0")/../.."
graphs=${GRAPHS:-16}
for alg in minimum bellman_ford bfs mst_prim; do
  for model in dear dear_paper nar_nohint nar_lt nar; do
    run=results/dear10/runs/$alg/$model/s0
    out=$run/tests/n512.json
    if [[ -f $run/results.json && ! -f $out ]]; then
      python -m dear_jax.pretrained --model="$run" --n=512 \
          --graphs="$graphs" --json="$out"
    fi
  done
done
