"""Tests for vaflax.circumplex: quadrant rule, ties, neutral radius, emotion table, metrics."""

import numpy as np
import pytest

from vaflax import circumplex


def test_quadrant_interiors_axes_and_origin():
  va = np.array([
      [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5],  # interiors
      [0.0, 0.0],  # origin -> 0 (zero counts as non-negative on both axes)
      [0.3, 0.0], [-0.3, 0.0],  # valence axis: 0 and 1 (arousal 0 is "activated")
      [0.0, 0.3], [0.0, -0.3],  # arousal axis: 0 and 3 (valence 0 is "pleasant")
      [-0.0, -0.0],  # negative zero is zero
      [np.nan, 0.2], [0.1, np.inf],  # non-finite -> -1
  ])
  want = [0, 1, 2, 3, 0, 0, 1, 0, 3, 0, -1, -1]
  got = circumplex.va_to_quadrant(va)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert [circumplex.quadrant_name(q) for q in want[:4]] == [
      'pleasant-activated', 'unpleasant-activated', 'unpleasant-calm', 'pleasant-calm',
  ]


def test_neutral_radius():
  va = np.array([[0.05, 0.05], [0.1, 0.0], [0.0999, 0.0], [-0.06, -0.08], [0.0, 0.0], [-0.2, 0.1]])
  # |va| = 0.0707, 0.1 (not < 0.1), 0.0999, 0.1 (not < 0.1), 0, 0.224
  got = circumplex.va_to_quadrant(va, neutral_radius=0.1)
  np.testing.assert_array_equal(got, [4, 0, 4, 2, 4, 1])
  np.testing.assert_array_equal(circumplex.va_to_quadrant(va), [0, 0, 0, 2, 0, 1])
  assert circumplex.quadrant_name(circumplex.NEUTRAL) == 'neutral'
  # Batched shapes pass through.
  assert circumplex.va_to_quadrant(np.zeros((3, 5, 2)), 0.1).shape == (3, 5)
  with pytest.raises(ValueError, match='neutral_radius'):
    circumplex.va_to_quadrant(va, neutral_radius=-1)
  with pytest.raises(ValueError, match='shape'):
    circumplex.va_to_quadrant(np.zeros((4, 3)))


def test_emotion_table_and_quadrants():
  assert circumplex.emotion_to_va('Happiness') == (0.81, 0.61)
  assert circumplex.emotion_to_va('angry') == circumplex.emotion_to_va('anger') == (-0.51, 0.59)
  assert circumplex.emotion_to_va('contempt') is None
  for v, a in circumplex.EMOTION_VA.values():
    assert -1 <= v <= 1 and -1 <= a <= 1
  want = {
      'happy': 0, 'surprised': 0, 'anger': 1, 'fearful': 1, 'disgusted': 1, 'sadness': 2,
      'calm': 3, 'neutral': 0, 'contempt': -1,
  }
  assert {n: circumplex.emotion_to_quadrant(n) for n in want} == want
  assert circumplex.emotion_to_quadrant('neutral', neutral_radius=0.1) == circumplex.NEUTRAL
  assert circumplex.emotion_to_quadrant('happy', neutral_radius=0.1) == 0
  with pytest.raises(ValueError, match="unknown emotion 'joyful'"):
    circumplex.emotion_to_va('joyful')


def test_emotion_ids_to_quadrant_affectnet_codes():
  # AffectNet: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt,
  # 8-10 none/uncertain/no-face; -1 is "no emotion label" in batches.
  ids = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, -1])
  np.testing.assert_array_equal(
      circumplex.emotion_ids_to_quadrant(ids, neutral_radius=0.2),
      [4, 0, 2, 0, 1, 1, 1, -1, -1, -1, -1],
  )


def test_quadrant_metrics_hand_case():
  true = [0, 0, 1, 1, 2, 2, 3, 3]
  pred = [0, 1, 1, 1, 2, 3, 3, 0]
  cm = circumplex.quadrant_confusion(true, pred)
  np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]])
  out = circumplex.quadrant_metrics(true, pred)
  # F1 per class = 2TP / (support + predicted): q0 2/4, q1 4/5, q2 2/3, q3 2/4.
  assert out['quadrant_accuracy'] == pytest.approx(5 / 8)
  assert out['quadrant_macro_f1'] == pytest.approx((0.5 + 0.8 + 2 / 3 + 0.5) / 4)
  assert out['quadrant_f1_unpleasant-activated'] == pytest.approx(0.8)
  assert 'quadrant_f1_neutral' not in out
  assert circumplex.quadrant_confusion(true, pred, with_neutral=True).shape == (5, 5)


def test_va_quadrant_metrics_with_mask():
  target = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5], [np.nan, 0.1]])
  pred = np.array([[3.0, 0.2], [0.4, 0.5], [-0.1, -0.9], [0.5, -0.1], [0.2, 0.2]])
  mask = np.array([[1, 1], [1, 1], [1, 1], [1, 0], [0, 0]])  # row 3: arousal invalid -> skipped
  out = circumplex.va_quadrant_metrics(pred, target, mask)
  assert out['quadrant_count'] == 3
  assert out['quadrant_accuracy'] == pytest.approx(2 / 3)  # row 1 predicted pleasant
  cm = circumplex.quadrant_confusion(circumplex.va_to_quadrant(target[:3]),
                                     circumplex.va_to_quadrant(pred[:3]))
  np.testing.assert_array_equal(cm.sum(1), [1, 1, 1, 0])
  np.testing.assert_array_equal(cm[1], [1, 0, 0, 0])
