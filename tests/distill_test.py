
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import common
from vaflax import optim
from vaflax.models import resnet
from vaflax.tasks import distill

K = 20


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_ccc(p, t):
  return 2 * np.mean((p - p.mean()) * (t - t.mean())) / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)


def np_student_loss(s_logits, t_logits, va, va_mask, frame_mask, *, gt_w, kl_w, temp):
  """Reference: gt_w * sum_d [CE_d + 1 - CCC_d] + kl_w * sum_d KL_d, all in float64."""
  s, t = s_logits.reshape(-1, 2, K).astype(np.float64), t_logits.reshape(-1, 2, K).astype(np.float64)
  y, m = va.reshape(-1, 2), va_mask.reshape(-1, 2) > 0
  fm = np.ones(len(s), bool) if frame_mask is None else frame_mask.reshape(-1) > 0
  centres = -1 + (2 * np.arange(K) + 1) / K
  pred = _softmax(s) @ centres
  gt = kl = 0.0
  for d in range(2):
    label = np.clip(np.floor((y[:, d] + 1) / 2 * K), 0, K - 1).astype(int)
    logp = np.log(_softmax(s[:, d]))
    gt += -np.mean(logp[np.arange(len(s)), label][m[:, d]])
    gt += 1 - _np_ccc(pred[m[:, d], d], y[m[:, d], d])
    pt, ps = _softmax(t[:, d] / temp), _softmax(s[:, d] / temp)
    kl += np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1)[fm])
  return gt_w * gt + kl_w * kl


def _config(**distill_fields):
  c = ml_collections.ConfigDict()
  c.loss = common.base_config().loss  # every loss field, at its declared default
  c.loss.ccc_weight, c.loss.binned_weight = 1.0, 1.0
  c.distill = ml_collections.ConfigDict(
      dict({'temperature': 1.5, 'kl_weight': 0.4, 'gt_weight': 0.6}, **distill_fields))
  return c


@pytest.mark.parametrize('windows', [False, True])
def test_student_loss_against_numpy(windows):
  rng = np.random.default_rng(0)
  lead = (3, 7) if windows else (16,)
  s, t = rng.normal(0, 2, lead + (2, K)), rng.normal(0, 2, lead + (2, K))
  va = rng.uniform(-1, 1, lead + (2,))
  va_mask = (rng.random(lead + (2,)) > 0.25).astype(np.float32)
  batch = {'va': jnp.asarray(va, jnp.float32), 'va_mask': jnp.asarray(va_mask)}
  frame_mask = None
  if windows:  # the last two frames of the first window are padding: no label, no KL
    frame_mask = np.ones(lead, np.float32)
    frame_mask[0, -2:] = 0
    va_mask *= frame_mask[..., None]
    batch.update(va_mask=jnp.asarray(va_mask), frame_mask=jnp.asarray(frame_mask))
  from vaflax import losses  # noqa: PLC0415

  out = {'va_logits': jnp.asarray(s, jnp.float32),
         'va': losses.binned_expectation(jnp.asarray(s, jnp.float32))}
  for gt_w, kl_w in [(0.6, 0.4), (1.0, 0.4)]:
    c = _config(gt_weight=gt_w, kl_weight=kl_w)
    loss, metrics = jax.jit(lambda o, tl, b, c=c: distill.student_loss(o, tl, b, c))(
        out, jnp.asarray(t, jnp.float32), batch)
    want = np_student_loss(s, t, va, va_mask, frame_mask, gt_w=gt_w, kl_w=kl_w, temp=1.5)
    assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert float(gt_w * metrics['loss_gt'] + kl_w * metrics['loss_kl']) == pytest.approx(want, rel=1e-5)


def _tiny_students(n=3):
  def make(r):
    return resnet.Model(depth=10, width=8, head_hidden=8, num_bins=K, rngs=r)
  return distill.TeacherStudents(make, n, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_students_stacked_ensemble_and_isolated_gradients():
  m = _tiny_students(3)
  m.eval()
  rng = np.random.default_rng(1)
  batch = {'image': jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32),
           'va': jnp.asarray(rng.uniform(-1, 1, (4, 2)), jnp.float32), 'va_mask': jnp.ones((4, 2))}
  c = _config()

  def only_student1(mm):
    out = jax.tree.map(lambda x: x[1], mm.student_outputs(batch))
    return distill.student_loss(out, mm.teacher_outputs(batch)['va_logits'], batch, c)[0]

  @nnx.jit
  def everything(mm):
    s_out = mm.student_outputs(batch)
    t_logits = mm.teacher_outputs(batch)['va_logits']
    per = jnp.stack([distill.student_loss(jax.tree.map(lambda x, k=k: x[k], s_out), t_logits,
                                          batch, c)[0] for k in range(3)])
    loss, metrics = distill.loss_fn(mm, batch, None, c)
    # The recipe freezes the teacher (config.frozen): the step differentiates the students only.
    diff = nnx.DiffState(0, optim.trainable(ml_collections.ConfigDict({'frozen': 'teacher(/|$)'})))
    grads = nnx.grad(lambda q: distill.loss_fn(q, batch, None, c)[0], argnums=diff)(mm)
    return s_out, mm(batch)['va'], per, loss, metrics, nnx.state(grads), nnx.state(
        nnx.grad(only_student1)(mm))

  s_out, ens, per, loss, metrics, grads, g1 = everything(m)
  assert s_out['va'].shape == (3, 4, 2) and s_out['va_logits'].shape == (3, 4, 2, K)
  assert float(jnp.abs(s_out['va'][0] - s_out['va'][1]).max()) > 1e-4  # different inits
  np.testing.assert_allclose(np.asarray(ens), np.asarray(s_out['va']).mean(0), atol=1e-6)
  assert float(loss) == pytest.approx(float(per.sum()), rel=1e-5)
  assert float(metrics['student_loss']) == pytest.approx(float(per.mean()), rel=1e-5)
  # The frozen teacher is not differentiated; student 1's gradient is that of its own loss alone.
  assert 'teacher' not in grads
  assert len(grads['students']) == len(g1['students']) == 3
  for a, b in zip(jax.tree.leaves(grads['students'][1]), jax.tree.leaves(g1['students'][1]),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # ...and student 1's loss does not reach students 0 and 2 (no parameter sharing).
  for k in (0, 2):
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g1['students'][k]))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g1['students'][1]))


def test_recipe_passes_the_users_init_from_with_its_mapping():
  """distill: the teacher starts from config.init_from as given; every student gets each source
  under students/k with the user's SRC=DST mapping kept (once the text dropped it), and the
  students stage reads the teacher stage under teacher/."""
  from configs import distill_va  # noqa: PLC0415
  from vaflax import recipes, runs, stages  # noqa: PLC0415

  c = distill_va.get_config('runlocal,students=2')
  c.init_from = '/r/cnn:backbone=backbone;/r/other'
  teacher, students = stages.plan(recipes.get('distill'), c, '/w')
  assert teacher.init == runs.parse_init_from(c.init_from)
  assert teacher.config.init_from == c.init_from and teacher.config.task == 'supervised'
  assert students.init == (
      runs.WeightSource('/w/teacher', (('', 'teacher'),)),
      runs.WeightSource('/r/cnn', (('backbone', 'students/0/backbone'),
                                   ('backbone', 'students/1/backbone'))),
      runs.WeightSource('/r/other', (('', 'students/0'), ('', 'students/1'))))
  assert runs.parse_init_from(students.config.init_from) == students.init
  assert students.config.task == 'distill' and students.config.frozen.startswith('teacher(/|$)')
  c.init_from = ''
  teacher, students = stages.plan(recipes.get('distill'), c, '/w')
  assert teacher.config.init_from == '' and students.config.init_from == '/w/teacher:=teacher'


def test_a_stage_starts_only_from_an_earlier_stage():
  from vaflax import stages  # noqa: PLC0415

  c = ml_collections.ConfigDict({'init_from': '', 'total_steps': 1})
  with pytest.raises(ValueError, match="'later', which is not an earlier stage"):
    stages.resolve([stages.Stage('a', c, (stages.FromStage('later'),)),
                    stages.Stage('later', c)], '/w')
  with pytest.raises(ValueError, match='Stage\\(init=...\\)'):
    stages.resolve([stages.Stage('a', ml_collections.ConfigDict({'init_from': '/x'}))], '/w')


def test_distillation_from_a_cnn_rnn_is_one_recipe():
  """arch=cnn_rnn: the binned frame CNN is the recipe's first stage, and teacher and students
  start from it (each student under students/k); a CNN given by init_from replaces the stage."""
  from configs import distill_va  # noqa: PLC0415
  from vaflax import recipes, stages  # noqa: PLC0415

  c = distill_va.get_config('runlocal,arch=cnn_rnn,students=2')
  cnn, teacher, students = stages.plan(recipes.get('distill'), c, '/w')
  assert cnn.name == 'cnn' and cnn.config.model_name == 'resnet' and cnn.config.input.window == 0
  assert cnn.config.model.num_bins == 20 and cnn.config.loss.binned_weight == 1.0
  assert teacher.config.model_name == 'temporal' and 'cnn' not in teacher.config
  assert teacher.config.init_from == '/w/cnn'
  assert students.config.init_from == '/w/teacher:=teacher;/w/cnn:=students/0,=students/1'
  c.init_from = '/r/cnn'
  assert [s.name for s in stages.plan(recipes.get('distill'), c, '/w')] == ['teacher', 'students']
