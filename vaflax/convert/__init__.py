"""Public PyTorch checkpoints -> vaflax run directories, exactly and without torch.

  python -m vaflax.convert --format=torchvision_resnet --input=resnet50-0676ba61.pth --workdir=OUT

`convert(format, path)` reads the file with the restricted reader (convert/reader.py), builds
the vaflax model of the format's config (inferred from the tensors' shapes), maps the tensors
into it (one module per format: its layout, its ignored keys, its licence) and moves them with
the one weight copier, checkpoint.transfer_weights. Every tensor the model needs must come from
the file, except the format's NEW prefixes (the VA head of a backbone); a missing or mis-shaped
tensor is an error naming it, and source tensors that are neither used nor ignored on purpose
are an error too (a mapper that drops weights silently is a wrong model). `write_run` makes the
result an ordinary run directory (config.json, checkpoints/0, provenance.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from vaflax import checkpoint as ckpt_lib
from vaflax import runs
from vaflax.convert import reader

FORMATS = ('torchvision_resnet', 'mae', 'emonet', 'fan', 'speech')


def format_module(name: str):
  if name not in FORMATS:
    raise ValueError(f'--format={name}: expected one of {", ".join(FORMATS)}')
  return importlib.import_module(f'vaflax.convert.{name}')


@dataclasses.dataclass
class Converted:
  config: object
  model: nnx.Module
  report: ckpt_lib.TransferReport
  new: list[str]  # target weights left at their initial value on purpose (e.g. the VA head)
  ignored: list[str]  # source keys dropped on purpose (e.g. ResNet's fc, MAE's decoder)
  source: str
  format: str


def _under_any(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p + '/') for p in prefixes)


def _build(config, mapping, path: str) -> nnx.Module:
  """The model of `config` with the file's weights, initialising only what the file lacks.

  An eager init of a full-size model dispatches one small compiled op per parameter (~10-20 s
  for a ResNet-50 on 2 cores): here the model is traced abstractly, and one jitted init returns
  only the variables the file does not fill (the new head, rng state), so XLA drops the rest."""
  create = lambda: runs.make_model(config, nnx.Rngs(config.seed))
  graphdef, state = nnx.split(nnx.eval_shape(create))
  flat = {ckpt_lib.path_str(p): v for p, v in nnx.to_flat_state(state)}
  for dst, value in mapping.out.items():
    if dst in flat and tuple(value.shape) != tuple(flat[dst].shape):
      key = mapping.origin[dst]
      raise ckpt_lib.CheckpointMismatchError(
          f'{path}: {key} of shape {tuple(mapping.src[key].shape)} does not fit the vaflax '
          f'model\'s {dst} of shape {tuple(flat[dst].shape)} (after the layout change: '
          f'{tuple(value.shape)})')
  from_file = {k for k in flat if k in mapping.out}
  rest = jax.jit(lambda: {ckpt_lib.path_str(p): v.get_value() for p, v in nnx.to_flat_state(nnx.split(
      create())[1]) if ckpt_lib.path_str(p) not in from_file})()
  for k, var in flat.items():
    # The file's values go in through transfer_weights (the one copier); zeros hold their place.
    var.set_value(rest[k] if k in rest else np.zeros(var.shape, var.dtype))
  return nnx.merge(graphdef, state)


def convert(fmt: str, path: str, variant: str = '', src: dict | None = None) -> Converted:
  """The vaflax model holding the weights of the PyTorch checkpoint at `path`."""
  mod = format_module(fmt)
  if src is None:  # a format whose input is a folder (speech: config.json + weights) reads it
    src = mod.read(path) if hasattr(mod, 'read') else reader.read_checkpoint(path)
  path = getattr(src, 'path', path)  # then the weights file it holds is the source
  try:
    config = mod.make_config(src, variant)
    if 'dtype' in config.model:  # the reference's float32 (the paper configs train in bfloat16)
      config.model.dtype = 'float32'
    mapping = mod.map_weights(src, config)
  except KeyError as e:
    raise ckpt_lib.CheckpointMismatchError(
        f'{path}: no tensor {e.args[0]!r}, which a {fmt} checkpoint has (keys in the file look '
        f'like {", ".join(list(src)[:6])})') from None
  except ckpt_lib.CheckpointMismatchError:
    raise
  except ValueError as e:  # a mapper's word on tensors it cannot place (a ResNet-101, a shape)
    raise ckpt_lib.CheckpointMismatchError(f'{path}: {e}') from None
  model = _build(config, mapping, path)
  report = ckpt_lib.transfer_weights(mapping.out, model, source_name=path)
  if report.unexpected:
    raise ckpt_lib.CheckpointMismatchError(
        f'{path}: mapped tensors with no place in the vaflax model: {report.unexpected[:8]}')
  missing = [k for k in report.missing if not _under_any(k, mod.NEW)]
  if missing:
    raise ckpt_lib.CheckpointMismatchError(
        f'{path}: the vaflax model\'s {", ".join(missing[:8])} got nothing from the file')
  used = mapping.used
  ignored = [k for k in src if k not in used and mod.IGNORED.match(k)]
  unused = [k for k in src if k not in used and not mod.IGNORED.match(k)]
  if unused:
    raise ckpt_lib.CheckpointMismatchError(
        f'{path}: tensors that a {fmt} model does not have: {", ".join(unused[:8])}'
        f'{" ..." if len(unused) > 8 else ""}; is this the right --format?')
  new = [k for k in report.missing if _under_any(k, mod.NEW)]
  return Converted(config, model, report, new, ignored, os.path.abspath(path), fmt)


def _sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def write_run(c: Converted, workdir: str) -> str:
  """Writes `c` as a run directory that runs.load_run, init_from, predict and evaluate read
  (runs.write_run, the one writer of a model's run directory), with its provenance.json."""
  workdir = runs.write_run(workdir, c.config, nnx.split(c.model)[1],
                           meta={'converted_from': c.source, 'format': c.format})
  mod = format_module(c.format)
  provenance = dict(source=c.source, sha256=_sha256(c.source), format=c.format,
                    licence=mod.LICENCE, loaded=len(c.report.loaded), new=c.new,
                    ignored=c.ignored,
                    preprocessing=getattr(mod, 'PREPROCESSING', c.config.input.pp_eval),
                    converted=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
  with open(os.path.join(workdir, 'provenance.json'), 'w') as f:
    json.dump(provenance, f, indent=2)
  return workdir
