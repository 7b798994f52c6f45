"""Teacher-student distillation over binned valence/arousal (Deng, Chen, Shi 2020).

The recipe `distill` (config.recipe; vaflax/recipes.py, run by vaflax/stages.py, each stage
resumable):
  1. teacher:  the supervised task on `config.model_name` (CE over 20 bins + CCC on the
     expectation) in workdir/teacher, for config.distill.teacher_total_{steps,epochs}, from
     config.init_from when set (arch=cnn_rnn: the binned CNN);
  2. students: N = config.distill.num_students copies of the same model trained together in
     ONE jitted step (one trace, one compile for all), beside the teacher, in workdir/students
     for config.total_{steps,epochs}. The teacher's weights come from stage 1 and it is frozen
     (config.frozen: no gradient, no optimizer state, running BatchNorm statistics); with
     config.init_from every student starts from those weights too. Its evaluation scores the
     teacher, each student and their ensemble (mean of the students' expectations):
     val/teacher/..., val/student{k}/..., val/ccc_* = the ensemble's.

Student loss (the authors' code, `optimize_parameters_kd`; lambda_teacher = 0.4, T = 1.5):
  gt_weight * [CE + (1 - CCC)]_{v,a}  +  kl_weight * [KL(teacher_T || student_T)]_{v,a}
with gt_weight = 1 - kl_weight = 0.6 there. The ground-truth term covers frames with a valid
label (`va_mask`); the KL term covers every real frame (`frame_mask` for windows), labelled or
not: soft labels are what the method adds where ground truth is missing. Students differ by
their initialisation; they see the same batches (they share the step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vaflax import losses
from vaflax.tasks import supervised


class TeacherStudents(nnx.Module):
  """A frozen teacher and `num_students` students of one architecture (students/0, /1, ...)."""

  def __init__(self, make_one, num_students: int, *, rngs: nnx.Rngs):
    if num_students < 1:
      raise ValueError(f'config.distill.num_students must be >= 1, got {num_students}')
    self.num_students = num_students
    self.teacher = make_one(rngs)
    # Each construction draws fresh keys from `rngs`: the students differ by initialisation.
    self.students = nnx.List([make_one(rngs) for _ in range(num_students)])

  def teacher_outputs(self, batch):
    """The teacher's outputs; the recipe freezes it (config.frozen), so in training it runs in
    eval mode and gets no gradient (vaflax/optim.py)."""
    return self.teacher(batch)

  def student_outputs(self, batch):
    """Every output of every student, stacked on a leading axis of size num_students.

    The students are separate modules called one after another in the same trace: one jitted
    step (one compile) for all of them, each with plain convolutions. Stacking their weights
    and using nnx.vmap turns the convolutions into grouped ones, and nnx.scan over a stack runs
    them in a loop XLA optimises poorly on CPU: both measured much slower (docs/deng2020.md)."""
    outs = [student(batch) for student in self.students]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  def __call__(self, batch):
    """The ensemble: the mean of the students' expectations (Deng et al. 2020)."""
    return {'va': jnp.mean(self.student_outputs(batch)['va'], axis=0)}


def make_model(config, model_cls, rngs):
  """Trainer hook of vaflax.train.make_setup: the teacher + students wrapper."""
  kwargs = config.model.to_dict()
  if not kwargs.get('num_bins'):
    raise ValueError('distillation needs a binned model: set config.model.num_bins (20 in Deng '
                     'et al. 2020)')
  return TeacherStudents(lambda r: model_cls(**kwargs, rngs=r),
                         int(config.distill.num_students), rngs=rngs)


# --- Loss -------------------------------------------------------------------------------------


def distillation_term(student_logits, teacher_logits, temperature, mask=None):
  """sum over (valence, arousal) of KL(teacher_T || student_T); logits (..., 2, K)."""
  return sum(losses.distillation_kl(student_logits[..., d, :], teacher_logits[..., d, :],
                                    temperature=temperature, mask=mask) for d in range(2))


def student_loss(out, teacher_logits, batch, config):
  """One student's loss and metrics; `out` is its output dict, `teacher_logits` (..., 2, K)."""
  dc = config.distill
  gt, metrics = supervised.supervised_loss(out, batch, config.loss)
  kl = distillation_term(out['va_logits'], teacher_logits, float(dc.temperature),
                         batch.get('frame_mask'))
  metrics = dict(metrics, loss_gt=gt, loss_kl=kl)
  return float(dc.gt_weight) * gt + float(dc.kl_weight) * kl, metrics


def loss_fn(model, batch, rng, config):
  """Sum over students of their own losses (each student gets exactly its own gradient);
  metrics are means over students."""
  del rng  # dropout draws from the models' own rng streams
  t_logits = model.teacher_outputs(batch)['va_logits']
  s_out = model.student_outputs(batch)
  loss_N, metrics_N = jax.vmap(lambda o: student_loss(o, t_logits, batch, config))(s_out)
  metrics = {k: jnp.mean(v) for k, v in metrics_N.items()}
  metrics['student_loss'] = jnp.mean(loss_N)
  return jnp.sum(loss_N), metrics


def predict_fn(model, batch, config):
  """The ensemble's `va`, and every member's for the evaluation (val/teacher/..., ...)."""
  del config
  students = model.student_outputs(batch)['va']
  members = {'teacher': model.teacher_outputs(batch)['va']}
  members.update({f'student{k}': students[k] for k in range(model.num_students)})
  return {'va': jnp.mean(students, axis=0), 'va_members': members}
