#!/usr/bin/env bash
# The DEAR-10 study's runs (PROTOCOL.md), cheapest algorithms first.
# Resumable: rerun to continue; finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
common=(--preset=dear10-cpu --out=results/dear10 --quiet --no_memory
        --config.dear.check_graphs=256
        --config.data.extra_test_lengths=128,256
        --config.data.extra_test_num_samples=16)
for alg in minimum bellman_ford bfs mst_prim insertion_sort binary_search \
           dag_shortest_paths floyd_warshall dfs strongly_connected_components; do
  python -m baselines.compare "${common[@]}" --algorithms="$alg" \
      --models=dear,dear_paper,nar_nohint,nar_lt --seeds=3
  python -m baselines.compare "${common[@]}" --algorithms="$alg" \
      --models=nar --seeds=1
done
