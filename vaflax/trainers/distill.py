"""Teacher-student distillation over binned valence/arousal (Deng, Chen, Shi 2020).

`run(config, workdir)` is the whole recipe, each stage resumable and skipped once finished:
  1. teacher:  the supervised task on `config.model_name` (CE over 20 bins + CCC on the
     expectation) in workdir/teacher, for config.distill.teacher_total_{steps,epochs};
  2. students: N = config.distill.num_students copies of the same model trained together in
     ONE jitted step (one trace, one compile for all: no retracing per student),
     next to the frozen teacher, in workdir/students for config.total_{steps,epochs}; they start
     from workdir/students_init, an exported checkpoint holding the teacher's weights (and
     config.init_from's, e.g. the frozen CNN of arch=cnn_rnn, for every student);
  3. evaluation of the teacher, of each student and of their ensemble (mean of the students'
     expectations) on the eval split -> workdir/metrics.jsonl and workdir/final_metrics.json
     (val/student{k}/..., val/teacher/..., val/ensemble/...; val/ccc_* = the ensemble's).

Student loss (the authors' code, `optimize_parameters_kd`; lambda_teacher = 0.4, T = 1.5):
  gt_weight * [CE + (1 - CCC)]_{v,a}  +  kl_weight * [KL(teacher_T || student_T)]_{v,a}
with gt_weight = 1 - kl_weight = 0.6 there. The ground-truth term covers frames with a valid
label (`va_mask`); the KL term covers every real frame (`frame_mask` for windows), labelled or
not: soft labels are what the method adds where ground truth is missing. Students differ by
their initialisation; they see the same batches (they share the step).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vaflax import checkpoint as ckpt_lib
from vaflax import losses, sharding, writers
from vaflax import metrics as metrics_lib
from vaflax.trainers import supervised


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
    """Teacher in eval mode (BatchNorm running averages, no dropout), no gradient."""
    t = nnx.view(self.teacher, use_running_average=True, deterministic=True,
                 raise_if_not_found=False)
    return jax.tree.map(jax.lax.stop_gradient, t(batch))

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
  del config
  return {'va': model(batch)['va']}


# --- Initialisation of the students stage -----------------------------------------------------


def workdir_weights(src_workdir: str) -> dict:
  """{path: array} of the parameters and BatchNorm statistics of a vaflax workdir's last
  checkpoint, restored through its own config.json (any model; any task)."""
  from vaflax import train  # noqa: PLC0415 (train imports trainers lazily)

  path = os.path.join(src_workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{src_workdir}: no config.json (init_from must be a vaflax workdir)')
  with open(path) as f:
    src_config = ml_collections.ConfigDict(json.load(f))
  setup, state = train.restore_workdir(src_config, src_workdir)
  model, _ = nnx.merge(setup.graphdef, state)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  return {p: np.asarray(jax.device_get(v.get_value())) for p, v in flat}


def _nest(flat: dict) -> dict:
  out = {}
  for p, v in flat.items():
    node = out
    for k in p[:-1]:
      node = node.setdefault(str(k), {})
    node[str(p[-1])] = v
  return out


def export_weights(dst: str, tree: dict, source: str) -> None:
  """A model-only checkpoint in the layout of a training state ({'0': model}, pure dicts), which
  the loop's init_from loads by path and shape (leaves it lacks keep their initial value)."""
  mngr = ckpt_lib.manager(os.path.join(dst, 'checkpoints'), async_save=False)
  try:
    ckpt_lib.save(mngr, 0, {'0': tree}, None, {'exported_from': source, 'model_name': 'export'},
                  force=True)
    mngr.wait_until_finished()
  finally:
    mngr.close()


def _exported(dst: str) -> bool:
  with ckpt_lib.manager(os.path.join(dst, 'checkpoints')) as mngr:
    return mngr.latest_step() is not None


def export_students_init(config, teacher_dir: str, dst: str) -> None:
  """The students stage's init_from (written once): the teacher's weights under 'teacher' and,
  with config.init_from (arch=cnn_rnn: the binned CNN), those weights for every student under
  'students/<k>'."""
  if _exported(dst):
    return
  tree = {'teacher': _nest(workdir_weights(teacher_dir))}
  if config.get('init_from'):
    n = int(config.distill.num_students)
    one = workdir_weights(config.init_from)
    tree['students'] = {str(k): _nest(one) for k in range(n)}
  export_weights(dst, tree, teacher_dir)


# --- The recipe -------------------------------------------------------------------------------


def _stage_config(config, **fields):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for k, v in fields.items():
      c[k] = v
  return c


def teacher_config(config, init_dir=''):
  dc = config.distill
  return _stage_config(config, task='supervised', total_steps=int(dc.teacher_total_steps),
                       total_epochs=float(dc.teacher_total_epochs), init_from=init_dir)


def students_config(config, init_dir):
  return _stage_config(config, task='distill', init_from=init_dir)


def _finished(stage_dir, stage_config) -> bool:
  """The stage wrote its final metrics, and for its current total_steps (raised: train on)."""
  path = os.path.join(stage_dir, 'final_metrics.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return int(json.load(f).get('step', 0)) >= int(stage_config.total_steps)


def evaluate_members(setup, state, eval_data) -> dict:
  """Pooled VA metrics of the teacher, each student and the ensemble, from one jitted pass."""
  def members(state, batch):
    model, _ = nnx.merge(setup.graphdef, state)
    model.eval()
    em = jnp.reshape(batch['eval_mask'], batch['eval_mask'].shape + (1,) * (batch['va'].ndim - 1))
    return {'teacher': model.teacher_outputs(batch)['va'],
            'students': model.student_outputs(batch)['va'],
            'va': batch['va'], 'mask': batch['va_mask'] * em, 'video': batch['video']}

  fn = jax.jit(members, in_shardings=(setup.state_sharding, sharding.batch_sharding(setup.mesh)),
               out_shardings=sharding.replicated(setup.mesh))
  cols = {}
  for batch in eval_data:
    out = jax.device_get(fn(state, sharding.to_global(batch, setup.mesh)))
    for k, v in out.items():
      cols.setdefault(k, []).append(np.asarray(v))
  cat = {k: np.concatenate(v, axis=1 if k == 'students' else 0) for k, v in cols.items()}
  va, mask = cat['va'].reshape(-1, 2), cat['mask'].reshape(-1, 2)
  video = np.broadcast_to(cat['video'], cat['va'].shape[:-1]).reshape(-1)
  keep = mask.max(-1) > 0
  students = cat['students'].reshape(cat['students'].shape[0], -1, 2)

  def score(pred):
    return metrics_lib.va_metrics(pred.reshape(-1, 2)[keep], va[keep], mask[keep],
                                  video_ids=video[keep])

  results = {}
  for name, pred in [('teacher', cat['teacher'])] + [(f'student{k}', s) for k, s in
                                                       enumerate(students)]:
    results.update({f'val/{name}/{m}': v for m, v in score(pred).items()})
  ens = score(students.mean(0))
  results.update({f'val/ensemble/{m}': v for m, v in ens.items()})
  for m in ('ccc_valence', 'ccc_arousal', 'ccc_mean'):
    results[f'val/student_mean/{m}'] = float(np.mean(
        [results[f'val/student{k}/{m}'] for k in range(len(students))]))
    results[f'val/{m}'] = ens[m]
  return results


def run(config, workdir: str) -> dict:
  """Teacher -> students -> evaluation; re-running the same command resumes where it stopped."""
  from vaflax import train  # noqa: PLC0415 (train imports trainers lazily)
  from vaflax.data import pipeline  # noqa: PLC0415

  workdir = os.path.abspath(os.path.expanduser(workdir))
  final_path = os.path.join(workdir, 'final_metrics.json')
  if os.path.exists(final_path):
    with open(final_path) as f:
      return json.load(f)
  teacher_dir, students_dir = os.path.join(workdir, 'teacher'), os.path.join(workdir, 'students')
  teacher_init = ''
  if config.get('init_from'):  # exported in pure-dict layout (what the loop's init_from reads)
    teacher_init = os.path.join(workdir, 'teacher_init')
    if not _exported(teacher_init):
      export_weights(teacher_init, _nest(workdir_weights(config.init_from)), config.init_from)
  tc = teacher_config(config, teacher_init)
  if not _finished(teacher_dir, tc):
    print(f'Distillation stage 1/3: teacher in {teacher_dir}', flush=True)
    train.train_and_evaluate(tc, teacher_dir)
  init_dir = os.path.join(workdir, 'students_init')
  export_students_init(config, teacher_dir, init_dir)
  sc = students_config(config, init_dir)
  if not _finished(students_dir, sc):
    print(f'Distillation stage 2/3: {config.distill.num_students} students in {students_dir}',
          flush=True)
    train.train_and_evaluate(sc, students_dir)

  print('Distillation stage 3/3: teacher, students and ensemble on '
        f'{config.input.eval_split}', flush=True)
  train.prepare_workdir(workdir, config)
  pidx, pcount = jax.process_index(), jax.process_count()
  _, num_train = pipeline.make_train_dataset(sc, pidx, pcount)
  setup = train.make_setup(sc, num_train, init=False)  # restored below: no initialisation
  with ckpt_lib.manager(os.path.join(students_dir, 'checkpoints')) as mngr:
    state, _ = ckpt_lib.restore(mngr, setup.state)
  eval_data = pipeline.EvalData(sc, sc.input.eval_split, process_index=pidx, process_count=pcount)
  results = evaluate_members(setup, state, eval_data)
  writer = writers.MetricWriter(workdir, tensorboard=bool(config.get('tensorboard', True)))
  writer.write(setup.total_steps, results)
  writer.close()
  for name in ['teacher', 'student_mean', 'ensemble'] + [
      f'student{k}' for k in range(int(config.distill.num_students))]:
    print(f'{name:>12}: ccc_valence={results[f"val/{name}/ccc_valence"]:.4f} '
          f'ccc_arousal={results[f"val/{name}/ccc_arousal"]:.4f}', flush=True)
  if jax.process_index() == 0:
    with open(final_path, 'w') as f:
      json.dump({k: (None if v is None or not np.isfinite(v) else float(v))
                 for k, v in results.items()}, f, indent=2)
  return results
