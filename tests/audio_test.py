"""Tests for vaflax/models/audio.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from flax import nnx

from vaflax.models import audio


def _ref_filterbank(sr, n_fft, n_mels, scale):
  """Independent triangular mel filterbank: a loop over filters and FFT bins in float64."""
  if scale == 'htk':
    to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  else:  # Slaney: 200/3 Hz per mel below 1 kHz, log step ln(6.4)/27 above
    to_mel = lambda f: f / (200.0 / 3) if f < 1000 else 15.0 + np.log(f / 1000) * 27 / np.log(6.4)
    to_hz = lambda m: m * 200.0 / 3 if m < 15 else 1000 * np.exp((m - 15) * np.log(6.4) / 27)
  top = to_mel(sr / 2)
  edges = [to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
  fb = np.zeros((n_fft // 2 + 1, n_mels))
  for j in range(n_mels):
    lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
    for k in range(n_fft // 2 + 1):
      f = k * sr / n_fft
      if lo < f <= mid:
        fb[k, j] = (f - lo) / (mid - lo)
      elif mid < f < hi:
        fb[k, j] = (hi - f) / (hi - mid)
  return fb


@pytest.mark.parametrize('scale', ['htk', 'slaney'])
def test_mel_filterbank_matches_loop_reference(scale):
  fb = audio.mel_filterbank(16000, 512, 40, scale=scale)
  np.testing.assert_allclose(fb, _ref_filterbank(16000, 512, 40, scale), atol=1e-6)
  norm = audio.mel_filterbank(16000, 512, 40, scale=scale, norm='slaney')
  # Slaney normalisation: every triangle has unit area in Hz (trapezoid over the FFT grid).
  hz = np.arange(257) * 16000 / 512
  area = np.trapezoid(norm, hz, axis=0)
  np.testing.assert_allclose(area[5:], 1.0, rtol=0.05)  # the narrowest low filters are undersampled


def test_log_mel_matches_scipy_stft():
  sr, fps, n_fft, f, m = 16000, 25, 512, 4, 48
  s = sr // fps  # 640 samples per video frame, hop 160
  x = np.random.default_rng(0).uniform(-0.5, 0.5, size=(2, 5, s)).astype(np.float32)
  out = audio.log_mel(jnp.asarray(x), sample_rate=sr, n_fft=n_fft, n_mels=m,
                      frames_per_video_frame=f)
  assert out.shape == (2, 5, f, m)
  # SciPy STFT with centred frames (zero padding n_fft/2), periodic Hann, hop S/F. It divides by
  # the window sum, which we undo to get the power spectrum.
  win = scipy.signal.get_window('hann', n_fft)
  _, _, z = scipy.signal.stft(x.reshape(2, -1).astype(np.float64), window=win, nperseg=n_fft,
                              noverlap=n_fft - s // f, boundary='zeros', padded=False,
                              return_onesided=True)
  power = np.abs(z * win.sum()) ** 2  # (B, K, frames)
  mel = np.einsum('bkn,km->bnm', power[..., :5 * f], _ref_filterbank(sr, n_fft, m, 'htk'))
  ref = np.log(np.maximum(mel, 1e-6)).reshape(2, 5, f, m)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_log_mel_uneven_samples_per_frame_loop_reference():
  # 30 fps at 16 kHz rounds to S = 533, not a multiple of F = 3: frames start at t*S+floor(f*S/F).
  sr, s, n_fft, f, m = 16000, 533, 400, 3, 32
  x = np.random.default_rng(1).normal(0, 0.3, size=(1, 4, s))
  out = audio.log_mel(jnp.asarray(x, jnp.float32), sample_rate=sr, n_fft=n_fft, n_mels=m,
                      frames_per_video_frame=f, mel_scale='slaney', log_floor=1e-5)
  flat = np.pad(x.reshape(-1), (n_fft // 2, n_fft // 2))
  win = np.hanning(n_fft + 1)[:-1]  # periodic Hann
  fb = _ref_filterbank(sr, n_fft, m, 'slaney')
  for t in range(4):
    for j in range(f):
      centre = t * s + (j * s) // f
      seg = flat[centre:centre + n_fft] * win  # padded index centre = original centre - n/2
      ref = np.log(np.maximum(np.abs(np.fft.rfft(seg)) ** 2 @ fb, 1e-5))
      np.testing.assert_allclose(out[0, t, j], ref, atol=1e-4, rtol=0)


def test_sine_peaks_in_its_mel_band():
  sr, s = 16000, 640
  t = np.arange(3 * s) / sr
  x = np.sin(2 * np.pi * 1000.0 * t).reshape(1, 3, s)
  out = np.asarray(audio.log_mel(jnp.asarray(x, jnp.float32), sample_rate=sr, n_mels=40))
  fb = audio.mel_filterbank(sr, 512, 40)
  expected = np.argmax(fb[int(round(1000 * 512 / sr))])  # filter with the 1 kHz bin's weight
  assert np.all(np.argmax(out[0, 1], axis=-1) == expected)


@pytest.mark.slow
def test_encoder_shapes_and_errors():
  enc = audio.AudioEncoder(n_mels=16, n_fft=256, frames_per_video_frame=2, width=24,
                           num_layers=2, rngs=nnx.Rngs(0))
  a = jax.random.normal(jax.random.key(0), (3, 6, 640)) * 0.1
  y = enc(a)
  assert y.shape == (3, 6, 24) and bool(jnp.all(jnp.isfinite(y)))
  enc.eval()  # running statistics: a single example is normalised the same way alone
  np.testing.assert_allclose(enc(a[:1]), enc(a)[:1], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r'\(B, T, S\)'):
    audio.log_mel(a[0])
  with pytest.raises(ValueError, match='fmin'):
    audio.AudioEncoder(fmax=9000, rngs=nnx.Rngs(0))
