"""RecordedStream: the live training stream, recorded once and replayed."""

import jax
import numpy as np

from dear_jax import input_pipeline


def _same(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_replay_equals_the_live_stream_and_resumes(data_cfg, tmp_path):
  cfg = input_pipeline.DataConfig(**dict(data_cfg.__dict__, cache_dir=str(tmp_path),
                                         train_sizes=(4, 5)))
  live = input_pipeline.TrainStream('bfs', cfg, seed=3, keep_hints=False)
  want = [next(live) for _ in range(5)]
  rec = input_pipeline.RecordedStream('bfs', cfg, seed=3, keep_hints=False)
  rec.record(2)                        # batches 0, 1 on disk
  got = [next(rec) for _ in range(3)]  # 0, 1 replayed; 2 recorded on the fly
  assert all(_same(g, w) for g, w in zip(got, want))
  # a new process: replays what is on disk, records on from the saved live state
  again = input_pipeline.RecordedStream('bfs', cfg, seed=3, keep_hints=False)
  again.set_state(rec.get_state())
  assert _same(next(again), want[3]) and _same(next(again), want[4])
  # another seed is another stream (not a replay of this one)
  other = input_pipeline.RecordedStream('bfs', cfg, seed=4, keep_hints=False)
  assert not _same(next(other), want[0])
