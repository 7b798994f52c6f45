"""PyTorch layouts -> vaflax (Flax NNX, NHWC) layouts, and the record of which tensor went where."""

from __future__ import annotations

import numpy as np


def conv(w_OxIxHxW) -> np.ndarray:
  """torch Conv2d weight (out, in, h, w) -> nnx.Conv kernel (h, w, in, out)."""
  return np.transpose(w_OxIxHxW, (2, 3, 1, 0))


def linear(w_OxI) -> np.ndarray:
  """torch Linear weight (out, in) -> nnx.Linear kernel (in, out)."""
  return np.transpose(w_OxI)


class Mapping:
  """{vaflax path: array} built from a torch state_dict, remembering each value's source key
  (so that a shape error names the file's tensor) and which source keys were used."""

  def __init__(self, src: dict):
    self.src, self.out, self.origin, self.used = src, {}, {}, set()

  def take(self, key: str, fn=None) -> np.ndarray:
    if key not in self.src:
      raise KeyError(key)  # convert() turns it into an error naming the tensor and the file
    self.used.add(key)
    return self.src[key] if fn is None else fn(self.src[key])

  def put(self, path: str, value, key: str) -> None:
    self.out[path], self.origin[path] = value, key

  def copy(self, key: str, path: str, fn=None) -> None:
    self.put(path, self.take(key, fn), key)

  def conv(self, torch_name: str, path: str, bias: bool = False) -> None:
    self.copy(f'{torch_name}.weight', f'{path}/kernel', conv)
    if bias:
      self.copy(f'{torch_name}.bias', f'{path}/bias')

  def linear(self, torch_name: str, path: str) -> None:
    self.copy(f'{torch_name}.weight', f'{path}/kernel', linear)
    self.copy(f'{torch_name}.bias', f'{path}/bias')

  def layer_norm(self, torch_name: str, path: str) -> None:
    self.copy(f'{torch_name}.weight', f'{path}/scale')
    self.copy(f'{torch_name}.bias', f'{path}/bias')

  def batch_norm(self, torch_name: str, path: str) -> None:
    """BatchNorm{1,2}d weight/bias/running_mean/running_var -> nnx.BatchNorm scale/bias/mean/
    var (eps 1e-5 on both sides in the vaflax models); num_batches_tracked is not needed."""
    for t, v in (('weight', 'scale'), ('bias', 'bias'), ('running_mean', 'mean'),
                 ('running_var', 'var')):
      self.copy(f'{torch_name}.{t}', f'{path}/{v}')
    if f'{torch_name}.num_batches_tracked' in self.src:
      self.used.add(f'{torch_name}.num_batches_tracked')
