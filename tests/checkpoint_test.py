"""The one writer of a model's run directory (vaflax/runs.py `write_run`, used by vaflax.convert
and the benchmarks) and its reader (`load_run`)."""

import json

import jax
import numpy as np
import pytest
from conftest import raw_checkpoint, tiny_config
from flax import nnx

from vaflax import runs


def _random_state(config):
  """The model state of `config` filled with random numbers (no initialisation ops: fast)."""
  rng = np.random.default_rng(0)

  def fill(v):
    x = v.get_value()
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return v.replace(jax.random.key(1))
    return v.replace(rng.standard_normal(x.shape).astype(x.dtype))

  abstract = nnx.eval_shape(lambda: runs.make_model(config, nnx.Rngs(0)))
  return jax.tree.map(fill, nnx.state(abstract), is_leaf=lambda x: isinstance(x, nnx.Variable))


def test_write_run_is_what_load_run_reads_and_never_overwrites(tmp_path):
  c = tiny_config('/no/data/needed')
  state = _random_state(c)
  wd = runs.write_run(str(tmp_path / 'run'), c, state, meta={'format': 'hand'})
  assert json.load(open(tmp_path / 'run' / 'config.json'))['model_name'] == c.model_name
  step, raw = raw_checkpoint(wd)
  assert step == 0 and 'optimizer' not in raw  # a model, no optimizer state
  run = runs.load_run(wd)
  assert run.step == 0 and run.meta['format'] == 'hand' and run.meta['task'] == c.task
  want = jax.tree.leaves(state)
  got = jax.tree.leaves(run.state)
  assert len(got) == len(want) > 10
  for a, b in zip(got, want, strict=True):
    if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileExistsError, match='holds checkpoints already'):
    runs.write_run(wd, c, state)
