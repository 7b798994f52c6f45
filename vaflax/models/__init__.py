"""VA models: each module exports `Model(...)` built from its config dict."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx


def count_params(module_or_state, filter_: Callable | type = nnx.Param) -> int:
  """Number of scalars in the `filter_` variables of a module (or in a state, e.g. an
  `nnx.eval_shape` result's `nnx.state`)."""
  state = (nnx.state(module_or_state, filter_) if isinstance(module_or_state, nnx.Module)
           else module_or_state)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
