#!/usr/bin/env bash
# The DEAR-10 study's n=512 tests (PROTOCOL.md, amendment of 2026-12-06):
# each finished seed-0 run of the four algorithms, from its best parameters.
# Resumable: a size already written is skipped; runs not finished yet wait.
# RUNS: where the finished runs' checkpoints are (the sweep's own folder, as
# the repository keeps no checkpoints); the results go to this repository.
# ALGORITHMS: a subset of the four (sweep.sh tests each as it finishes).
# STUDY, MODELS: another study's folder and models, tested the same way on
# the same graphs (results/sharper/sweep.sh).
# Each test scores the first of its GRAPHS graphs that fit MAX_SECONDS at
# the pace of its own first 2 (PROTOCOL.md's amendments of 2026-12-07).
set -euo pipefail
cd "$(dirname "$0")/../.."
graphs=${GRAPHS:-16}
max_seconds=${MAX_SECONDS:-1800}
study=${STUDY:-results/dear10}
runs=${RUNS:-$study/runs}
for alg in ${ALGORITHMS:-minimum bellman_ford bfs mst_prim}; do
  case $alg in minimum|bellman_ford|bfs|mst_prim) ;; *) continue ;; esac
  for model in ${MODELS:-dear dear_paper nar_nohint nar_lt nar}; do
    run=$runs/$alg/$model/s0
    out=$study/runs/$alg/$model/s0/tests/n512.json
    if [[ -f $run/results.json && -d $run/checkpoints && ! -f $out ]]; then
      python -m dear_jax.pretrained --model="$run" --n=512 \
          --graphs="$graphs" --max_seconds="$max_seconds" --json="$out"
    fi
  done
done
