"""A run leaves JAX: its face model and the detector as ONNX or StableHLO, plus export.json.

  python -m vaflax.export --workdir=W --format=onnx|stablehlo --output=DIR
  python -m vaflax.export.run --model=DIR --input=FILE_or_DIR --output=OUT   (JAX-free, ONNX)

  face.py        the run's face model with its evaluation preprocessing, one JAX function
  detector.py    BlazeFace (network and anchor decoding; NMS stays outside)
  preprocess.py  pp_eval ops as JAX ops (OpenCV's resize as two matrix products)
  formats.py     jax2onnx / jax.export writers
  run.py         the runner: detect, NMS, track, crop, score, predict's CSV; NumPy + onnxruntime

docs/deploy.md has the formats, the parity measured, the runner and what is missing.
This package's __init__ imports no JAX: `vaflax.export.run` must stay loadable without it.
"""

from __future__ import annotations

import json
import os
import time

EXPORT_JSON = 'export.json'


def _licence(workdir: str, config) -> dict:
  """The licence terms that travel with the exported files: a converted run's own (its
  provenance.json), else those of the weights it started from (config.init_from), else the
  note that the training data's terms apply."""
  sources = [workdir]
  init = str(config.get('init_from') or '')
  sources += [s.split(':')[0] for s in init.split(';') if s.strip()]
  for src in sources:
    path = os.path.join(src, 'provenance.json')
    if os.path.isfile(path):
      with open(path) as f:
        prov = json.load(f)
      terms = str(prov.get('licence', ''))
      out = {'terms': terms, 'from': path, 'weights_source': prov.get('source'),
             'weights_sha256': prov.get('sha256'), 'weights_format': prov.get('format')}
      words = terms.replace('-', ' ').split()
      if 'ND' in words:
        out['note'] = ('no-derivatives terms: the exported files are a derivative of these '
                       'weights; use them yourself under the same terms and do not distribute them')
      elif 'NC' in words:
        out['note'] = 'non-commercial terms: the exported files carry them'
      return out
  return {'terms': 'trained with vaflax (code: Apache-2.0); the terms of the training data '
                   f'({config.input.dataset}) and of any initial weights apply to the model',
          'from': None}


def export_run(workdir: str, fmt: str, out_dir: str, *, overrides=(),
               flip_tta: bool | None = None) -> dict:
  """Writes DIR/face.<ext>, DIR/detector.<ext> and DIR/export.json; returns export.json."""
  import jax  # noqa: PLC0415

  from vaflax.export import detector, face, formats  # noqa: PLC0415

  if fmt not in formats.FORMATS:
    raise ValueError(f'--format={fmt}: expected one of {", ".join(formats.FORMATS)}')
  os.makedirs(out_dir, exist_ok=True)
  ext = formats.EXTENSIONS[fmt]
  graph = face.face_graph(workdir, overrides=overrides, flip_tta=flip_tta)
  det_fn, det_in, det_out, det_info = detector.detector_graph()
  parts = {'face': (graph.fn, graph.inputs, graph.outputs),
           'detector': (det_fn, det_in, det_out)}
  timings = {}
  for name, (fn, ins, outs) in parts.items():
    t0 = time.perf_counter()
    path = os.path.join(out_dir, name + ext)
    if fmt == 'onnx':
      formats.to_onnx(fn, ins, outs, path, name)
    else:
      formats.to_stablehlo(fn, ins, path)
    timings[name] = round(time.perf_counter() - t0, 1)
  from vaflax import runs  # noqa: PLC0415

  config = runs.load_config(graph.info['workdir'])
  if fmt == 'onnx':
    import jax2onnx  # noqa: PLC0415

    converter = f'jax2onnx {getattr(jax2onnx, "__version__", "?")}, opset 21'
  else:
    from jax import export as jax_export  # noqa: PLC0415

    converter = (f'jax.export (serialization version '
                 f'{jax_export.maximum_supported_calling_convention_version}), platforms cpu, cuda')
  import vaflax  # noqa: PLC0415

  manifest = {
      'format': fmt,
      'converter': converter,
      'exported_with': {'vaflax': vaflax.__version__, 'jax': jax.__version__},
      'exported': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
      'batch_axis': 'the first axis of every input and output is dynamic',
      'face': {'file': 'face' + ext, 'inputs': graph.inputs, 'outputs': graph.outputs,
               **graph.info},
      'detector': {'file': 'detector' + ext, 'inputs': det_in, 'outputs': det_out, **det_info},
      'licence': _licence(graph.info['workdir'], config),
      'export_seconds': timings,
  }
  tmp = os.path.join(out_dir, f'{EXPORT_JSON}.part{os.getpid()}')
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, EXPORT_JSON))
  return manifest
