"""Every trainer survives preemption and crashes: cut at random steps, resume, end bit-identical.

For each config (supervised ResNet, temporal ResNet + GRU, EmoFAN, MAE pretraining, fusion, the
distillation runner and the multi-stage mae_va runner) a tiny run is trained straight through.
The same run is then preempted in-process at random steps -- the SIGTERM flag of vaflax.train is
replaced by a stub that fires after a chosen number of steps (deterministic, unlike a signal from
a timer) -- and re-run until it finishes. mae_va is preempted in an earlier and in a later stage,
distillation in its students stage (its teacher stage is the supervised trainer, preempted in the
supervised case: the cut run starts from the straight run's teacher, as a run stopped between its
two stages); a re-run must not redo a finished stage. Every checkpoint directory of the cut run
(stages and exported inits) must end with the same step and bit-identical arrays, and its
metrics.jsonl and final_metrics.json must hold the same numbers as the straight run's. The
straight runs of the two multi-stage recipes (distill, mae_va) are also checked end to end: what
each stage produced and how the weights flow between stages.

Single-stage configs also resume after a simulated SIGKILL: the workdir as a kill at step k
leaves it (checkpoints up to the last periodic one, metrics up to k, and a half-written
checkpoint directory of a later step) must resume and end bit-identical.

Kill steps are drawn from VAFLAX_KILL_SEED (default 0) and printed; every seed must pass.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import raw_checkpoint, tiny_config
from flax import nnx
from PIL import Image

from vaflax import recipes, runs, train, writers
from vaflax import stages as stages_lib
from vaflax.data import sources
from vaflax.models import vit

SEED = int(os.environ.get('VAFLAX_KILL_SEED', '0'))
TIMING_KEYS = ('train/steps_per_sec', 'train_seconds')  # wall-clock, not results
MAE_VA = recipes.get('mae_va')




# --- Tiny configs -------------------------------------------------------------------------------


def _loop(c, steps, batch, log_every=2):
  """Few steps, a checkpoint every 2 (all kept), eval only at the end, 1 device."""
  c.batch_size = batch
  c.total_steps = steps
  c.total_epochs = 0.0
  c.log_every_steps = log_every
  c.eval_every_steps = steps
  c.checkpoint_every_steps = 2
  c.max_to_keep = 100
  c.schedule.warmup_steps = 1  # a non-constant lr: the step number must resume too
  c.schedule.warmup_epochs = 0.0
  c.mesh.num_devices = 1
  c.tensorboard = False
  return c


def resnet_case(data_dir):
  c = tiny_config(data_dir)
  c.model.dropout = 0.3  # the model's own dropout rng stream must resume too
  # Evaluation is deterministic given the parameters, and the multi-stage cases below check it
  # after a resume: not needed here (it is a third of this case's time).
  c.input.eval_split = ''
  return _loop(c, 6, 8), None


def temporal_case(data_dir):
  from configs import resnet_gru_va  # noqa: PLC0415

  c = resnet_gru_va.get_config('runlocal')
  # The CNN-RNN stage alone (its CNN stage is the supervised case above), trained end to end.
  c.recipe, c.frozen = '', ''
  del c['cnn']
  c.input.data_dir = data_dir
  c.model.update(depth=10, width=8, head_hidden=8, gru_hidden=8, dropout=0.3)
  c.image_size = 32
  c.input.window, c.input.window_stride = 4, 4
  c.input.eval_split = ''  # evaluation is deterministic given the parameters: not needed here
  return _loop(c, 5, 4), None


def emofan_case(data_dir):
  from configs import emofan_va  # noqa: PLC0415

  c = emofan_va.get_config('runlocal')
  c.input.data_dir = data_dir
  c.input.eval_split = ''
  small = dict(num_stacks=1, hourglass_depth=1, width=16, head_width=16, head_blocks=1)
  c.model.update({k: v for k, v in small.items() if k in c.model})
  c.image_size = 32
  return _loop(c, 5, 8), None


TINY_VIT = dict(width=16, depth=1, num_heads=2, mlp_dim=32)


def _tiny_fusion(c):
  c.model.update(width=16, num_layers=1, num_heads=2, max_len=4)
  c.model.audio.update(n_mels=8, width=8, num_layers=1)
  c.input.window = c.input.window_stride = 4


def distill_case(data_dir):
  from configs import distill_va  # noqa: PLC0415
  c = distill_va.get_config('runlocal,students=2')
  c.input.data_dir = data_dir
  c.input.eval_split = 'test'
  c.model.update(depth=10, width=8, head_hidden=8)
  c.image_size = 32
  _loop(c, 4, 8)
  c.distill.teacher_total_steps = 4
  return c, _recipe_runner


def mae_va_case(data_dir):
  from configs import mae_va  # noqa: PLC0415
  c = mae_va.get_config('runlocal')
  c.data_dir = data_dir
  for stage in (c.pretrain, c.finetune, c.fusion):  # the built set, not runlocal's 4x larger one
    stage.input.dataset = 'synthetic_va'
  c.vit.update(TINY_VIT)
  patch = c.vit.get('patch_size') or int(c.vit.variant.split('/')[-1])
  c.image_size = 3 * patch  # 3x3 patches
  c.tensorboard = False
  c.test_split = 'test'  # the recipe's test-split records, checked by _check_mae_va_run
  _loop(c.pretrain, 4, 16)
  c.pretrain.model.update(decoder_width=16, decoder_depth=1, decoder_num_heads=2)
  _loop(c.finetune, 4, 8)
  c.finetune.model.drop_path = 0.2  # stochastic depth: a random stream that must resume
  _loop(c.fusion, 4, 4)  # fusion_video_only follows it (linked fields)
  _tiny_fusion(c.fusion)
  c.fusion.model.drop_path = 0.2
  return c, _recipe_runner


# name, file that must exist, config builder, stages in run order (None: one stage), kills.
def _recipe_runner(config, workdir):
  """The stage runner on config.recipe (what vaflax.main runs for a recipe config)."""
  return stages_lib.run(recipes.get(config.recipe), config, workdir)


# Kills: how many preemptions of a single-stage run, or the stages a multi-stage run is preempted
# in (one each). The MAE pretraining and fusion trainers are preempted as stages of mae_va (its
# pretrain stage is configs/mae_pretrain.py:runlocal, its fusion stage the audio-visual model).
# A resumed run preempted again: mae_va here, and the real-signal test of tests/reliability_test.py
# (SIGKILL, resume, SIGTERM, resume).
CASES = [
    ('supervised_resnet', 'configs/resnet_va.py', resnet_case, None, 1),
    ('temporal_resnet_gru', 'configs/resnet_gru_va.py', temporal_case, None, 1),
    ('emofan', 'configs/emofan_va.py', emofan_case, None, 1),
    ('distill', 'vaflax/recipes.py', distill_case, ('teacher', 'students'), ('students',)),
    ('mae_va', 'vaflax/recipes.py', mae_va_case,
     ('pretrain', 'finetune', 'fusion_video_only', 'fusion'), ('pretrain', 'fusion')),
]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- Preemption in-process ----------------------------------------------------------------------


class _StopAfter:
  """Stands in for train._SigtermFlag: reads True from the k-th check on (k=None: never)."""

  def __init__(self, k):
    self.k, self.n = k, 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass

  @property
  def set(self):
    self.n += 1
    return self.k is not None and self.n >= self.k


class _Harness:
  """Runs a config with `train.train_and_evaluate` wrapped: records which stage workdirs each
  run trains and preempts the chosen stage after a chosen number of its steps."""

  def __init__(self, monkeypatch):
    self.real = train.train_and_evaluate
    self.calls, self.stop = [], {}
    monkeypatch.setattr(train, 'train_and_evaluate', self._train)
    monkeypatch.setattr(train, '_SigtermFlag', lambda: _StopAfter(self.stop.get(self.calls[-1])))

  def _train(self, config, workdir):
    self.calls.append(os.path.basename(workdir))
    return self.real(config, workdir)

  def run(self, runner, config, workdir, stop=None):
    self.calls, self.stop = [], dict(stop or {})
    return (runner or train.train_and_evaluate)(config, workdir)


def _stage_totals(config, stages):
  if stages is None:
    return {'cut': int(config.total_steps)}
  if stages[0] == 'teacher':  # distill
    return {'teacher': int(config.distill.teacher_total_steps), 'students': int(config.total_steps)}
  return {s: int(config[s].total_steps) for s in stages}


def _draw_kills(name, totals, kills):
  """[(stage workdir name, step)] in run order, at random steps: `kills` preemptions of a
  single-stage run (workdir 'cut'), or one in each of the stages named in `kills`."""
  rng = np.random.default_rng([SEED, sum(map(ord, name))])
  if isinstance(kills, int):
    steps = rng.choice(np.arange(1, totals['cut']), size=kills, replace=False)
    return [('cut', int(k)) for k in sorted(steps.tolist())]
  return [(stage, int(rng.integers(1, totals[stage]))) for stage in kills]


# --- Comparison ---------------------------------------------------------------------------------


def _checkpoint_dirs(workdir):
  return sorted(os.path.relpath(root, workdir) for root, dirs, _ in os.walk(workdir)
                if 'checkpoints' in dirs)


def _latest(run_dir):
  step, st = raw_checkpoint(run_dir)
  flat = jax.tree_util.tree_leaves_with_path(st)
  out = {}
  for path, x in flat:
    if hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    out[jax.tree_util.keystr(path)] = np.asarray(x)
  return step, out


def _records(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    text = f.read()
  recs = [json.loads(line) for line in text.splitlines()] if path.endswith('.jsonl') else [
      json.loads(text)]
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith('time/')}
          for r in recs]


def _records_equal(a, b):
  drop = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS}  # noqa: E731
  return drop(a) == drop(b)


def assert_same_run(ref, got):
  """Same checkpoint dirs, same last step, bit-identical arrays, the same metrics."""
  dirs = _checkpoint_dirs(ref)
  assert dirs and dirs == _checkpoint_dirs(got)
  for d in dirs:
    s1, p1 = _latest(os.path.join(ref, d))
    s2, p2 = _latest(os.path.join(got, d))
    assert s1 == s2, d
    assert p1.keys() == p2.keys(), d
    for k, a in p1.items():
      np.testing.assert_array_equal(p2[k], a, err_msg=f'{d}: {k}')
  for root, _, files in os.walk(ref):
    for fn in files:
      if fn in ('metrics.jsonl', 'final_metrics.json'):
        rel = os.path.relpath(os.path.join(root, fn), ref)
        assert _records(os.path.join(got, rel)) == _records(os.path.join(ref, rel)), rel


# --- The tests ----------------------------------------------------------------------------------


def _case(name):
  case = next(x for x in CASES if x[0] == name)
  if not os.path.exists(os.path.join(REPO, case[1])):
    pytest.skip(f'{case[1]} does not exist yet')
  return case


@pytest.fixture(scope='module')
def reference(tmp_path_factory, synthetic_data_dir):
  """name -> (config, runner, workdir of its straight run), each run once per module."""
  runs = {}

  def get(name):
    if name not in runs:
      _, _, make, _, _ = _case(name)
      config, runner = make(synthetic_data_dir)
      wd = str(tmp_path_factory.mktemp(name) / 'ref')
      calls = []
      real = train.train_and_evaluate

      def recorded(c, w):
        calls.append(os.path.basename(w))
        return real(c, w)

      train.train_and_evaluate = recorded  # (restored below; monkeypatch is function-scoped)
      try:
        (runner or real)(config, wd)
      finally:
        train.train_and_evaluate = real
      runs[name] = config, runner, wd, calls
    return runs[name]

  return get


@pytest.mark.slow
@pytest.mark.parametrize('name', [c[0] for c in CASES])
def test_preempted_at_random_steps_resumes_bit_identical(name, tmp_path, reference, monkeypatch):
  _, _, _, stages, kills = _case(name)
  config, runner, ref, straight_calls = reference(name)
  if stages is not None:
    assert straight_calls == list(stages)
  kills = _draw_kills(name, _stage_totals(config, stages), kills)
  print(f'{name}: VAFLAX_KILL_SEED={SEED}, preempted at (stage, step) {kills}')
  h = _Harness(monkeypatch)
  cut = str(tmp_path / 'cut')
  if stages is not None:
    # Stages before the first preempted one are the straight run's (their trainers are preempted
    # in their own cases): the cut run starts as a run stopped between two stages.
    for stage in stages[:stages.index(kills[0][0])]:
      shutil.copytree(os.path.join(ref, stage), os.path.join(cut, stage))
  started = {}  # stage -> the step its next run starts at
  for i, (stage, k) in enumerate(kills + [(None, None)]):
    if k is None:
      h.run(runner, config, cut)
    else:
      with pytest.raises(train.Preempted) as e:
        h.run(runner, config, cut, {stage: k - started.get(stage, 0)})
      assert e.value.step == k and e.value.code == train.PREEMPTED_EXIT_CODE
      assert h.calls[-1] == stage
      started[stage] = k
    if stages is not None:
      # A run starts with the stage it was stopped in (the first run: the first stage not copied
      # from the straight run): finished stages are not redone.
      first = kills[max(i - 1, 0)][0]
      assert h.calls[0] == first and set(h.calls).isdisjoint(stages[:stages.index(first)]), h.calls
  assert_same_run(ref, cut)
  # The straight run is there already: check what the multi-stage recipes produced.
  if name == 'distill':
    _check_distill_run(ref)
  if name == 'mae_va':
    _check_mae_va_run(ref, config)


def _check_distill_run(wd):
  """Distillation end to end (vaflax/tasks/distill.py): the students stage scores the teacher,
  each student and the ensemble; the teacher inside it is the teacher stage's final weights,
  frozen (unchanged, no optimizer state)."""
  final = json.load(open(os.path.join(wd, 'final_metrics.json')))
  for member in ('teacher', 'student0', 'student1', 'student_mean'):
    for dim in ('valence', 'arousal'):
      assert np.isfinite(final[f'val/{member}/ccc_{dim}'])
  assert final['val/student_mean/ccc_arousal'] == pytest.approx(
      (final['val/student0/ccc_arousal'] + final['val/student1/ccc_arousal']) / 2)
  # The ensemble (val/ccc_*) is the mean of the students' expectations: scored independently.
  assert final['val/ccc_valence'] != final['val/student0/ccc_valence']
  teacher = _weights(os.path.join(wd, 'teacher'))
  inside = _weights(os.path.join(wd, 'students'), 'teacher')
  assert len(teacher) > 50 and teacher.keys() == inside.keys()
  for k, v in teacher.items():
    np.testing.assert_array_equal(v, inside[k], err_msg=k)
  _, raw = raw_checkpoint(os.path.join(wd, 'students'))
  opt_paths = [jax.tree_util.keystr(p) for p, _ in
               jax.tree_util.tree_leaves_with_path(raw['optimizer'])]
  assert opt_paths and not [p for p in opt_paths if 'teacher' in p]


def _weights(stage_dir, sub=None):
  """{path: array} of the float leaves (parameters, BatchNorm statistics) of a stage's model."""
  _, st = raw_checkpoint(stage_dir)
  model = st['model'][sub] if sub else st['model']
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree.leaves_with_path(model)
          if jnp.issubdtype(x.dtype, jnp.floating)}


def _check_reconstruction_png(path, config):
  """Rows of original | masked | reconstruction; originals = validation images spread over the
  first eval batch (every batch/8-th, vaflax/tasks/mae.py), 2 px apart."""
  png = np.asarray(Image.open(path))
  batch = next(iter(sources.EvalData(config, 'validation')))
  images = batch['image']
  side, stride = images.shape[1], max(1, images.shape[0] // 8)
  shown = images[::stride][:8][batch['eval_mask'][::stride][:8] > 0]  # padding rows left out
  expect = np.clip(np.round((shown + 1) * 127.5), 0, 255).astype(np.uint8)
  rows, cell = len(expect), side + 2
  assert png.shape == (rows * cell - 2, 3 * cell - 2, 3)
  for r in range(rows):
    np.testing.assert_array_equal(png[r * cell:r * cell + side, :side], expect[r])
  masked = png[:side, cell:cell + side].astype(int)
  assert np.sum(np.all(masked == 128, axis=-1)) >= 0.5 * side * side  # most patches masked grey


def _model_params(stage_workdir):
  return runs.load_run(stage_workdir).model()


def _flat(module):
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def _check_mae_va_run(wd, c):
  """The mae_va recipe end to end, on the straight run (`stages.run(c, wd)` finished; the cut
  copy was preempted in its pretrain and fusion stages and resumed without redoing finished
  stages): the top-level record, the reconstruction curve and PNG, the weights flowing MAE
  encoder -> fine-tuning init -> both fusion stages (frozen), and nothing redone on a finished
  run. (A stop between two stages is the distill case's cut run.)"""
  top = writers.read_metrics(wd)
  assert len(top) == 1
  rec = top[0]
  assert rec == json.load(open(f'{wd}/final_metrics.json'))
  for key in ('val/ccc_valence', 'val/ccc_arousal', 'video_only/val/ccc_valence',
              'video_only/val/ccc_arousal', 'finetune/val/ccc_valence', 'test/ccc_arousal',
              'video_only/test/ccc_arousal', 'pretrain/val/loss'):
    assert np.isfinite(rec[key]), key  # a few steps per stage: learning is checked elsewhere
  fus = json.load(open(f'{wd}/fusion/final_metrics.json'))
  assert rec['val/ccc_arousal'] == fus['val/ccc_arousal']
  assert rec['audio_gain/val/ccc_arousal'] == pytest.approx(
      rec['val/ccc_arousal'] - rec['video_only/val/ccc_arousal'])
  pre = writers.read_metrics(f'{wd}/pretrain')
  steps = int(c.pretrain.total_steps)
  assert [r['step'] for r in pre if 'train/loss' in r] == list(
      range(int(c.pretrain.log_every_steps), steps + 1, int(c.pretrain.log_every_steps)))
  assert [r['val/loss'] for r in pre if 'val/loss' in r] == [rec['pretrain/val/loss']]
  assert rec['pretrain/train/loss_first'] == pre[0]['train/loss'] and rec['pretrain/val/loss'] > 0
  _check_reconstruction_png(f'{wd}/pretrain/reconstructions/step_{steps}.png', c.pretrain)

  stages = {s.name: s.config for s in stages_lib.plan(MAE_VA, c, wd)}
  assert stages['finetune'].init_from == f'{wd}/pretrain:encoder=encoder'
  mae_enc = _flat(_model_params(f'{wd}/pretrain').encoder)
  init = vit.Model(**stages['finetune'].model.to_dict(), rngs=nnx.Rngs(123))
  head0 = np.asarray(init.head.out.kernel[...])
  train.init_from(stages['finetune'], init)  # what the finetune stage started from
  for k, v in _flat(init.encoder).items():
    np.testing.assert_array_equal(v, mae_enc[k])
  np.testing.assert_array_equal(init.head.out.kernel[...], head0)  # the new head: its own init
  ft_enc = _flat(_model_params(f'{wd}/finetune').encoder)
  assert any(not np.array_equal(v, mae_enc[k]) for k, v in ft_enc.items())  # it trained
  for name in ('fusion', 'fusion_video_only'):
    visual = _flat(_model_params(f'{wd}/{name}').visual)
    assert visual.keys() == ft_enc.keys()
    for k, v in visual.items():  # frozen: still exactly the fine-tuned encoder
      np.testing.assert_array_equal(v, ft_enc[k])

  got, calls = _run_recording(c, wd)
  assert got == rec and calls == [] and len(writers.read_metrics(wd)) == 1  # nothing redone


def _run_recording(c, wd):
  """stages.run(c, wd) -> (its final record, the stage workdirs it trained)."""
  calls = []
  real = train.train_and_evaluate
  train.train_and_evaluate = lambda sc, swd: (calls.append(os.path.basename(swd)), real(sc, swd))[1]
  try:
    return stages_lib.run(MAE_VA, c, wd), calls
  finally:
    train.train_and_evaluate = real


def _as_killed_at(src, dst, k):
  """`dst` as a SIGKILL at step k leaves a run `src` trained straight: its checkpoints up to the
  last periodic one at or before k, metrics logged up to k, and the next periodic checkpoint
  half-written (Orbax's temporary folder, one array file truncated)."""
  shutil.copytree(src, dst)
  ck = os.path.join(dst, 'checkpoints')
  steps = sorted(int(s) for s in os.listdir(ck) if s.isdigit())
  kept = [s for s in steps if s <= k]
  for s in steps:
    if s not in kept:
      shutil.rmtree(os.path.join(ck, str(s)))
  later = [s for s in steps if s > k]
  if later:
    half = os.path.join(ck, f'{later[0]}.orbax-checkpoint-tmp')
    shutil.copytree(os.path.join(src, 'checkpoints', str(later[0])), half)
    os.remove(os.path.join(half, '_CHECKPOINT_METADATA'))
    for root, _, files in os.walk(os.path.join(half, 'state')):
      for fn in files:
        with open(os.path.join(root, fn), 'r+b') as f:
          f.truncate(max(0, os.path.getsize(os.path.join(root, fn)) // 2))
        break
  recs = [json.loads(line) for line in open(os.path.join(src, 'metrics.jsonl'))]
  with open(os.path.join(dst, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in recs if r['step'] <= k)
  os.remove(os.path.join(dst, 'final_metrics.json'))
  return kept[-1] if kept else None


@pytest.mark.slow
@pytest.mark.parametrize('name', ['supervised_resnet'])
def test_sigkill_resumes_from_last_periodic_checkpoint(name, tmp_path, reference):
  config, _, ref, _ = reference(name)
  killed = str(tmp_path / 'killed')
  rng = np.random.default_rng([SEED, 9, sum(map(ord, name))])
  k = int(rng.integers(int(config.checkpoint_every_steps), int(config.total_steps)))
  resumed_from = _as_killed_at(ref, killed, k)
  print(f'{name}: VAFLAX_KILL_SEED={SEED}, killed at step {k}, last checkpoint {resumed_from}')
  train.train_and_evaluate(config, killed)
  # Steps between the checkpoint and the kill were logged twice (before the kill and after the
  # resume): with the same numbers. Compare the last record of each step.
  recs = {}
  for r in map(json.loads, open(os.path.join(killed, 'metrics.jsonl'))):
    key = (r['step'], tuple(sorted(r)))
    if key in recs:
      assert _records_equal(r, recs[key]), r
    recs[key] = r
  with open(os.path.join(killed, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in recs.values())
  assert not any('tmp' in s for s in os.listdir(os.path.join(killed, 'checkpoints')))
  assert_same_run(ref, killed)
