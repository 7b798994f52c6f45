"""EmoFAN training (Toisoul et al. 2021): shake-shake VA regression + emotions + landmark heatmaps.

loss = va_weight * sum over d in (valence, arousal) of
         alpha_d * RMSE_d + beta_d * (1 - PCC_d) + gamma_d * (1 - CCC_d)
           with (alpha_d, beta_d, gamma_d) ~ U[0,1]^3 normalised to sum 1, drawn anew every step
           from the step rng (the "shake-shake" regularisation of the paper, Methods)
     + emotion_weight  * cross-entropy of `emotion_logits` on the frames with `emotion >= 0`
     + landmark_weight * heatmap MSE against gaussian targets, mean over all stacks
       (intermediate supervision), over the frames with `landmarks_mask > 0`

Config fields read here (configs/emofan_va.py):
  config.loss.va_weight        weight of the shake-shake VA loss (default 1; 0 trains landmarks
                               only, the first stage of the two-stage recipe).
  config.loss.landmark_weight  weight of the heatmap MSE (0: VA/emotion only). The per-pixel MSE
                               is small (~pi sigma^2 / (h w) at start), so useful weights are
                               ~10-100; with the FAN frozen it trains nothing (reported only).
  config.loss.emotion_weight   weight of the emotion cross-entropy (needs model.num_emotions > 0
                               and an `emotion` batch key, -1 = no label).
  config.loss.heatmap_sigma    gaussian std of the heatmap targets, in heatmap pixels (FAN: 1 at
                               64x64).
  config.eval.flip_tta         evaluate on the mean of the image and its mirror.
The paper's second stage freezes the FAN with config.frozen = 'fan(/|$)' (vaflax/optim.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vaflax import losses, tta
from vaflax.models import fan


def va_shake_shake_loss(va_pred_Bx2, va_Bx2, va_mask_Bx2, coefficients_2x3):
  """Sum over valence and arousal of `losses.shake_shake_regression`, one coefficient set each.

  A dimension with no valid entry in the batch contributes 0 with a finite gradient (a plain RMSE
  of nothing is sqrt(0), whose derivative is infinite and would poison the step with NaN).
  """
  total, parts = 0.0, []
  for d in range(2):
    p, t, m = va_pred_Bx2[:, d], va_Bx2[:, d], va_mask_Bx2[:, d]
    any_valid = jnp.sum(m) > 0
    # With no valid entry, score a harmless stand-in (all ones, target = pred + 1) and drop it.
    m_safe = jnp.where(any_valid, m, 1.0)
    t_safe = jnp.where(any_valid, t, jax.lax.stop_gradient(p) + 1.0)
    l_d = losses.shake_shake_regression(p, t_safe, m_safe, coefficients_2x3[d])
    l_d = jnp.where(any_valid, l_d, 0.0)
    parts.append(l_d)
    total = total + l_d
  return total, parts


def heatmap_loss(heatmaps_all_SxBxhxwxL, landmarks_BxLx2, landmarks_mask_B, sigma: float):
  """MSE of every stack's heatmaps against gaussian targets, mean over stacks and valid frames."""
  s, b, h, w, n = heatmaps_all_SxBxhxwxL.shape
  if landmarks_BxLx2.shape != (b, n, 2):
    raise ValueError(f'batch["landmarks"] must be (B, {n}, 2) to match the heatmaps, got '
                     f'{landmarks_BxLx2.shape}')
  valid_B = landmarks_mask_B > 0
  # Masked frames may carry NaN landmarks: centre them before building targets.
  lm = jnp.where(valid_B[:, None, None], landmarks_BxLx2, 0.5)
  target_BxhxwxL = fan.landmarks_to_heatmaps(lm, (h, w), sigma)
  mse_SxB = jnp.mean((heatmaps_all_SxBxhxwxL - target_BxhxwxL[None]) ** 2, axis=(2, 3, 4))
  return jnp.mean(losses.masked_mean(mse_SxB, jnp.broadcast_to(landmarks_mask_B, (s, b)), axis=1))


def emofan_loss(out, batch, coefficients_2x3, lc):
  """Loss and metrics of one batch from the model outputs `out`."""
  metrics = {}
  va_mask = batch['va_mask']
  l_va, (l_v, l_a) = va_shake_shake_loss(out['va'], batch['va'], va_mask, coefficients_2x3)
  loss = lc.va_weight * l_va
  metrics['loss_valence'], metrics['loss_arousal'] = l_v, l_a
  c = losses.va_ccc_per_dim(out['va'], batch['va'], va_mask)
  metrics['ccc_valence'], metrics['ccc_arousal'] = c[0], c[1]

  if lc.emotion_weight:
    if 'emotion_logits' not in out:
      raise ValueError('config.loss.emotion_weight > 0 needs model.num_emotions > 0')
    if 'emotion' not in batch:
      raise KeyError('config.loss.emotion_weight > 0 but the batch has no "emotion" key')
    e = batch['emotion']
    has = e >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(
        out['emotion_logits'].astype(jnp.float32), jnp.where(has, e, 0))
    l_e = losses.masked_mean(ce, has)
    loss = loss + lc.emotion_weight * l_e
    metrics['loss_emotion'] = l_e
    hit = jnp.argmax(out['emotion_logits'], axis=-1) == e
    metrics['emotion_accuracy'] = losses.masked_mean(hit, has)

  if 'landmarks' in batch:
    lm_mask = batch.get('landmarks_mask', jnp.ones(batch['landmarks'].shape[:1], jnp.float32))
    l_h = heatmap_loss(out['heatmaps_all'], batch['landmarks'], lm_mask,
                       lc.heatmap_sigma)
    if lc.landmark_weight:
      loss = loss + lc.landmark_weight * l_h
    metrics['loss_heatmap'] = l_h
    pred_lm = fan.heatmaps_to_landmarks(jax.lax.stop_gradient(out['heatmaps']))
    metrics['nme'] = fan.normalised_mean_error(pred_lm, batch['landmarks'], lm_mask)
  elif lc.landmark_weight:
    raise KeyError('config.loss.landmark_weight > 0 but the batch has no "landmarks" key')
  return loss, metrics


def loss_fn(model, batch, rng, config):
  # Two coefficient sets (valence, arousal) per step: the shake-shake draw of Toisoul et al.
  coefficients_2x3 = losses.shake_shake_coefficients(rng, (2,))
  return emofan_loss(model(batch), batch, coefficients_2x3, config.loss)


def _outputs(model, batch, config):
  del config
  out = model(batch)
  return {k: out[k] for k in ('va', 'heatmaps', 'emotion_logits') if k in out}


def predict_fn(model, batch, config):
  """`va` (with flip TTA when config.eval.flip_tta), `landmarks` (B,68,2) and `emotion_logits`.

  With `landmarks` in the batch also `eval_nme` (B,), the loop's val/nme: the NME of each example
  with landmarks, 0 for one without (`landmarks_mask` 0), and `eval_landmarks_frac` (B,), its
  mask (val/landmarks_frac). The loop averages eval_<x> over all real examples, so val/nme is the
  NME over the examples with landmarks times their share: exact when every example has them
  (synthetic_va; AffectNet but for malformed rows), else divide by val/landmarks_frac.
  """
  fn = _outputs
  if tta.enabled(config):
    # The mirror permutation is defined for the iBUG-68 markup only: with another markup the
    # heatmaps (and landmarks) are those of the image alone.
    unmirror = {'heatmaps': fan.flip_heatmaps} if model.num_landmarks == 68 else {}
    fn = tta.flip_tta(_outputs, unmirror)
  res = fn(model, batch, config)
  res['landmarks'] = fan.heatmaps_to_landmarks(res.pop('heatmaps'))
  if 'landmarks' in batch:
    lm_mask = batch.get('landmarks_mask', jnp.ones(batch['landmarks'].shape[:1], jnp.float32))
    nme_B = fan.normalised_mean_error(res['landmarks'], batch['landmarks'], lm_mask,
                                      per_example=True)
    res['eval_nme'] = jnp.where(lm_mask > 0, nme_B, 0.0)
    res['eval_landmarks_frac'] = (lm_mask > 0).astype(jnp.float32)
  return res
