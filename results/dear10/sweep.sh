#!/usr/bin/env bash
# The DEAR-10 study's runs (PROTOCOL.md), in the order of its amendment
# "the order of the remaining runs": the primary pair (dear, nar_lt) over all
# ten algorithms first, then the other models; each stage cheapest
# algorithms first. Resumable: rerun to continue; finished runs are skipped.
# Each algorithm's seed-0 runs are tested at n=512 (test_n512.sh) and seed 0
# of dear and dear_paper stored in pretrained/ as soon as they finish, while
# their checkpoints are on this machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
common=(--preset=dear10-cpu --out=results/dear10 --quiet --no_memory
        --config.dear.check_graphs=256
        --config.data.extra_test_lengths=128,256
        --config.data.extra_test_num_samples=16
        --config.data.extra_test_max_seconds=1800)
algorithms=(minimum bellman_ford bfs mst_prim dag_shortest_paths insertion_sort
            binary_search floyd_warshall dfs strongly_connected_components)
keep() {  # ALG: seed 0 of dear and dear_paper into pretrained/, once finished
  for model in dear dear_paper; do
    local run=results/dear10/runs/$1/$model/s0
    if [[ -f $run/results.json && -d $run/checkpoints &&
          ! -f pretrained/$1/$model/model.json ]]; then
      python -m dear_jax.pretrained --store="$run" \
          --model="pretrained/$1/$model" --name="$model"
    fi
  done
}
stage() {  # stage MODELS SEEDS
  for alg in "${algorithms[@]}"; do
    python -m baselines.compare "${common[@]}" --algorithms="$alg" \
        --models="$1" --seeds="$2"
    ALGORITHMS="$alg" bash results/dear10/test_n512.sh
    keep "$alg"
  done
}
if [[ -n ${CONTROLS_OF:-} ]]; then  # the sharper study's controls on one algorithm
  algorithms=("$CONTROLS_OF")
  stage "${CONTROL_MODELS:-dear,nar_lt}" 2
  exit 0
fi
stage dear,nar_lt 3
stage nar_nohint 3
stage dear_paper 3
stage nar 1
bash results/dear10/budget.sh
