#!/usr/bin/env bash
# The sharper-at-scale study's runs (PROTOCOL.md), cheapest algorithms first.
# Resumable: rerun to continue; finished runs and re-tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/sharper
common=(--preset=dear10-cpu --out="$out" --quiet --no_memory
        --config.dear.check_graphs=256
        --config.data.extra_test_lengths=128,256
        --config.data.extra_test_num_samples=16
        --config.data.extra_test_max_seconds=1800)
algorithms=(bfs mst_prim dag_shortest_paths)
n512() {  # ALG MODEL...: seed 0 at n=512 where the control has it (PROTOCOL.md)
  STUDY=$out ALGORITHMS=$1 MODELS="${*:2}" bash results/dear10/test_n512.sh
}
retest() {  # ALG MODEL SUFFIX --config.KEY=VALUE: the softmax runs re-tested
  for s in 0 1; do
    local source=$out/runs/$1/$2_softmax/s$s dest=$out/runs/$1/$2_softmax_$3/s$s
    if [[ ! -d $source/checkpoints && ! -f $dest/results.json ]]; then
      echo "$dest: not tested, $source has no checkpoints here"
      continue  # lost with an earlier machine (PROTOCOL.md's amendments)
    fi
    python -m baselines.retest --quiet --source="$source" --dest="$dest" "$4"
  done
}
for alg in "${algorithms[@]}"; do
  for model in dear nar_lt; do  # the control (seeds 0, 1) where not there yet,
    # the softmax runs re-tested at once (while the checkpoints are here), decay
    CONTROLS_OF=$alg CONTROL_MODELS=$model bash results/dear10/sweep.sh
    python -m baselines.compare "${common[@]}" --algorithms="$alg" \
        --models="${model}_softmax" --seeds=2
    retest "$alg" "$model" at --config.model.adaptive_temperature=True
    retest "$alg" "$model" max --config.model.test_aggregation=max
    python -m baselines.compare "${common[@]}" --algorithms="$alg" \
        --models="${model}_decay" --seeds=2
  done
  n512 "$alg" dear_softmax dear_decay dear_softmax_at dear_softmax_max \
      nar_lt_softmax nar_lt_decay nar_lt_softmax_at nar_lt_softmax_max
done
# compare's own report again, the re-tests included; then the study's tables
python -m baselines.compare --report_only --out="$out"
python -m baselines.sharper --out="$out" --control=results/dear10
