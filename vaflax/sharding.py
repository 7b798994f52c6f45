"""Device mesh from config, logical -> mesh axis rules, host-local <-> global arrays (the XLA
options of the jitted steps on a CPU are in vaflax/cpu.py).

The mesh has axes ('data', 'fsdp'). Batches are split over both (every device sees distinct
examples). Parameters carry logical axis names (nnx.with_partitioning metadata); the rules of
`config.sharding_rules` map them to mesh axes, and a dimension that the mesh axis does not divide
stays replicated (a small conv or a 10-class head is not worth sharding).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')

def make_mesh(mesh_config) -> jax.sharding.Mesh:
  devices = jax.devices()
  if int(mesh_config.num_devices) > 0:
    devices = devices[: int(mesh_config.num_devices)]
  n = len(devices)
  fsdp = int(mesh_config.fsdp)
  data = int(mesh_config.data)
  if data == -1:
    if n % fsdp:
      raise ValueError(f'config.mesh.fsdp={fsdp} does not divide the {n} devices')
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(f'config.mesh data={data} x fsdp={fsdp} != {n} devices; use data=-1')
  # Auto axes: GSPMD propagation. Explicit axes (make_mesh's default in jax 0.12) make NNX
  # convolutions demand an out_sharding on every call (measured with flax 0.12 / jax 0.12).
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _logical_names(leaf):
  if isinstance(leaf, nnx.Variable):
    md = leaf.get_metadata()
    return md.get('out_sharding') or md.get('sharding_names') or md.get('sharding')
  return None


def state_shardings(abstract_state, mesh, rules) -> object:
  """NamedSharding per leaf of an (abstract) nnx State, from logical names and rules."""
  rules = dict(rules or ())
  sizes = dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))

  def one(leaf):
    names = _logical_names(leaf)
    value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    shape = getattr(value, 'shape', ())
    if not names or len(names) != len(shape):
      return NamedSharding(mesh, P())
    spec, used = [], set()
    for dim, name in zip(shape, names, strict=True):
      axis = rules.get(name) if name is not None else None
      if axis is None or axis in used or dim % sizes[axis]:
        spec.append(None)
      else:
        spec.append(axis)
        used.add(axis)
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def to_global(batch: dict, mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over the batch axes (multi-host safe)."""
  sh = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)), batch)
