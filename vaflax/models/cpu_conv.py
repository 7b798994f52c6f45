"""Convolution whose backward pass is arranged for XLA:CPU (the ResNet's `conv_impl='cpu'`).

Same forward as `lax.conv_general_dilated`, and the backward pass is XLA's own convolution
gradients too; only what XLA:CPU may fuse into them changes. XLA computes the weight gradient as
a convolution over the batch, so it transposes the activation and the cotangent to (C, H, W, B).
Left to itself it fuses those transposes with the BatchNorm/ReLU/residual arithmetic that
produced them, and such a fusion recomputes that arithmetic while reading NHWC in transposed
order, element by element. An `optimization_barrier` makes both plain arrays first, so the
transposes are plain copies: a ResNet-18 train step takes ~8-10 % less CPU time (2-core CPU,
benchmarks/RESULTS.md, "CPU: convolution backward", with what else was tried and lost: an
im2col GEMM for the weight gradient, stride-2 input gradients split by parity). On GPU/TPU the
barrier would only block useful fusions, so the ResNet uses this on the CPU only.
The result is deterministic and equal to `jax.grad` of `lax.conv_general_dilated` up to float32
round-off (tests/cpu_conv_test.py).
Forms the custom VJP does not cover (dilations, groups, other layouts) go to lax unchanged.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _is_nhwc(dimension_numbers) -> bool:
  """True for NHWC inputs / HWIO kernels, as strings or as nnx.Conv's ConvDimensionNumbers."""
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(map(tuple, dimension_numbers)) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(x, w, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """Drop-in for `lax.conv_general_dilated` (the `conv_general_dilated` argument of nnx.Conv)."""
  covered = (x.ndim == 4 and _is_nhwc(dimension_numbers) and feature_group_count == 1
             and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1)))
             and not isinstance(padding, str) and precision is None
             and kwargs.get('preferred_element_type') is None and kwargs.get('out_sharding') is None)
  if not covered:
    return lax.conv_general_dilated(x, w, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    **kwargs)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(x, w, tuple(int(s) for s in window_strides), pads)


def _plain(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x_BxHxWxC, w_KxKxCxO, strides, pads):
  return _plain(x_BxHxWxC, w_KxKxCxO, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return _plain(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, res, g_BxhxwxO):
  # The barrier makes x and g plain NHWC arrays before XLA transposes them (module doc).
  x, w, g = lax.optimization_barrier((*res, g_BxhxwxO))
  _, vjp = jax.vjp(lambda x_, w_: _plain(x_, w_, strides, pads), x, w)
  return vjp(g)


_conv.defvjp(_conv_fwd, _conv_bwd)
