"""Writing a JAX function of fixed-rank inputs as ONNX (jax2onnx) or StableHLO (jax.export).

Both formats get a dynamic batch (the first axis of every input and output); the weights are
constants inside the file. ONNX goes through jax2onnx, the maintained converter that traces JAX
(and Flax NNX) to ONNX operators without TensorFlow (tf2onnx would need jax2tf and TF at export
time). StableHLO is `jax.export`'s serialisation: `jax.export.deserialize(bytes).call(...)`
runs it under any JAX of the same or a newer serialisation version, without vaflax.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np

FORMATS = ('onnx', 'stablehlo')
EXTENSIONS = {'onnx': '.onnx', 'stablehlo': '.stablehlo'}
BATCH = 'N'  # the dynamic batch axis: ONNX dim_param and jax.export symbolic name


def _jax2onnx_compat():
  """jax2onnx 0.17.1 reads `jax._src.core.ClosedJaxpr` when it inlines a nested jit (jnp.einsum,
  jnp.round ... are jitted); JAX 0.12 merged ClosedJaxpr into Jaxpr (which takes the old
  (jaxpr, consts) arguments) and keeps the name only in jax.extend.core. Give the old name back
  when it is missing, so jax2onnx runs on JAX 0.11 and 0.12 alike."""
  from jax._src import core  # noqa: PLC0415

  if not hasattr(core, 'ClosedJaxpr'):
    import jax.extend.core  # noqa: PLC0415

    core.ClosedJaxpr = jax.extend.core.ClosedJaxpr


_SKIPPED_PASSES = ('transpose', 'redundant_reshape_pairs', 'redundant_casts')


@contextlib.contextmanager
def _jax2onnx_fixes():
  """Two changes to jax2onnx 0.17.1 for the length of one conversion (each only where the
  attribute it replaces exists):

  - its passes that fold Transpose pairs across elementwise ops mis-wire a ResNet's residual
    blocks (the block input reaches one branch in NHWC, the other in NCHW: onnxruntime refuses the
    graph, 'Add: incompatible dimensions'): they are left out, and so are the passes that drop
    redundant Reshape pairs and Casts, which rescan the whole graph for every node (half a
    minute each on BlazeFace and EmoNet on 2 cores). onnxruntime removes redundant transposes,
    reshapes and casts itself when it loads the graph;
  - after each JAX equation it checks that the equation's output is connected by scanning every
    node built so far (quadratic: minutes for BlazeFace on 2 cores); a value with a producer node
    is connected, so that is asked first, then whether it is a graph input or an initializer.
  """
  from jax2onnx.converter import ir_optimizations as opt  # noqa: PLC0415
  from jax2onnx.converter import output_binding as ob  # noqa: PLC0415

  saved_passes = getattr(opt, '_OPTIMIZER_PASSES', None)
  saved_check = getattr(ob, '_value_is_graph_connected', None)
  if saved_passes is not None:
    opt._OPTIMIZER_PASSES = tuple(p for p in saved_passes if not any(
        k in p.name for k in _SKIPPED_PASSES))
  if saved_check is not None:
    ob._value_is_graph_connected = lambda ctx, value: (
        getattr(value, 'producer', lambda: None)() is not None
        or any(v is value for v in ctx.builder.inputs)
        or any(v is value for v in ctx.builder.initializers)
        or saved_check(ctx, value))
  try:
    yield
  finally:
    if saved_passes is not None:
      opt._OPTIMIZER_PASSES = saved_passes
    if saved_check is not None:
      ob._value_is_graph_connected = saved_check


def _shape(spec: dict):
  return tuple(BATCH if d is None else int(d) for d in spec['shape'])


def to_onnx(fn, inputs: list[dict], outputs: list[dict], path: str, name: str) -> str:
  """Writes `fn` as one self-contained ONNX file (opset 21: onnxruntime >= 1.20 runs it)."""
  import jax2onnx  # noqa: PLC0415 -- the export extra

  _jax2onnx_compat()
  specs = [_onnx_input(s) for s in inputs]
  with _jax2onnx_fixes():
    model = jax2onnx.to_onnx(fn, specs, model_name=name, opset=21,
                             input_names=[s['name'] for s in inputs],
                             output_names=[s['name'] for s in outputs])
  tmp = f'{path}.part{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(model.SerializeToString())
  os.replace(tmp, path)
  return path


def _onnx_input(spec: dict):
  # jax2onnx takes a ShapeDtypeStruct whose shape may hold a string: a named dynamic axis.
  return jax.ShapeDtypeStruct(_shape(spec), np.dtype(spec['dtype']))


def to_stablehlo(fn, inputs: list[dict], path: str) -> str:
  """Writes `jax.export`'s serialisation of `fn` with a symbolic batch (platform: CPU and, where
  the exporting JAX has them, CUDA; the caller picks one at load time)."""
  from jax import export  # noqa: PLC0415

  (n,) = export.symbolic_shape(BATCH)
  args = [jax.ShapeDtypeStruct(tuple(n if d is None else int(d) for d in s['shape']),
                               np.dtype(s['dtype'])) for s in inputs]
  exp = export.export(jax.jit(fn), platforms=('cpu', 'cuda'))(*args)
  tmp = f'{path}.part{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(exp.serialize())
  os.replace(tmp, path)
  return path
