import csv
import json
import os
import time

import numpy as np
import pytest
from conftest import tiny_run
from PIL import Image

from vaflax import evaluate, metrics, runs


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, synthetic_data_dir):
  return tiny_run(tmp_path_factory, synthetic_data_dir)


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_evaluate_outputs_and_pooled_ccc_from_saved_frames(workdir, tmp_path, capsys):
  out = tmp_path / 'eval'
  rc = evaluate.main([f'--workdir={workdir}', '--split=test', f'--output={out}',
                      '--config.batch_size=96'])  # 6 eval batches instead of 72
  assert rc == 0, capsys.readouterr().err
  rec = json.load(open(out / 'metrics_synthetic_va_test.json'))
  assert rec['checkpoint_step'] == 1 and rec['split'] == 'test' and rec['num_frames'] == 576
  m = rec['metrics']
  rows = _read_csv(out / 'predictions_synthetic_va_test.csv')
  assert len(rows) == 576
  pred = np.array([[float(r['valence_pred']), float(r['arousal_pred'])] for r in rows])
  va = np.array([[float(r['valence']), float(r['arousal'])] for r in rows])
  mask = np.array([[float(r['valence_mask']), float(r['arousal_mask'])] for r in rows])
  vids = [r['video_id'] for r in rows]
  again = metrics.va_metrics(pred, va, mask, video_ids=vids)
  for k in ('ccc_valence', 'ccc_arousal', 'ccc_mean', 'pcc_mean', 'rmse_mean', 'sagr_mean',
            'per_video_ccc_mean'):
    assert m[k] == pytest.approx(again[k], abs=1e-9), k
  # Quadrants of the regressed VA, from the same rows, match the JSON and its confusion matrix.
  from vaflax import circumplex  # noqa: PLC0415

  q = circumplex.va_quadrant_metrics(pred, va, mask)
  assert m['quadrant_accuracy'] == pytest.approx(q['quadrant_accuracy'])
  cm = np.array(rec['quadrant_confusion'])
  assert cm.sum() == 576 and np.trace(cm) / 576 == pytest.approx(q['quadrant_accuracy'])

  per_video = _read_csv(out / 'per_video_synthetic_va_test.csv')
  assert [r['video_id'] for r in per_video] == [f'test_{i:04d}' for i in range(24)]
  assert all(int(r['frames']) == 24 for r in per_video)
  first = [i for i, v in enumerate(vids) if v == 'test_0000']
  one = metrics.va_metrics(pred[first], va[first], mask[first])
  assert float(per_video[0]['ccc_valence']) == pytest.approx(one['ccc_valence'], abs=1e-6)
  assert float(per_video[0]['mean_valence']) == pytest.approx(va[first, 0].mean(), abs=1e-6)
  assert float(per_video[0]['mean_pred_arousal']) == pytest.approx(pred[first, 1].mean(), abs=1e-6)

  for name in ('circumplex', 'va_scatter', 'quadrant_confusion'):
    with Image.open(out / f'{name}_synthetic_va_test.png') as im:
      assert im.size[0] >= 400 and im.size[1] >= 400
  assert 'ccc_mean=' in capsys.readouterr().out


def test_config_overrides_and_bad_input(tmp_path, capsys):
  import ml_collections  # noqa: PLC0415

  c = ml_collections.ConfigDict({'a': 1, 'b': {'c': 0.5, 'd': 'x', 'e': False, 'f': [1, 2]}})
  runs.apply_overrides(c, ['a=3', 'b.c=2', 'b.d=hello', 'b.e=true', 'b.f=(3, 4)'])
  assert (c.a, c.b.c, c.b.d, c.b.e, tuple(c.b.f)) == (3, 2.0, 'hello', True, (3, 4))
  assert isinstance(c.a, int) and isinstance(c.b.c, float)
  with pytest.raises(ValueError, match="config.b has no field 'zz'"):
    runs.apply_overrides(c, ['b.zz=1'])
  with pytest.raises(ValueError, match='b.e=maybe'):
    runs.apply_overrides(c, ['b.e=maybe'])

  assert evaluate.main([f'--workdir={tmp_path}/missing']) == 2
  assert 'no such directory' in capsys.readouterr().err
  (tmp_path / 'empty').mkdir()
  assert evaluate.main([f'--workdir={tmp_path}/empty']) == 2
  assert 'not a vaflax workdir' in capsys.readouterr().err
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'config.json').write_text('{"task": "supervised"')
  assert evaluate.main([f'--workdir={bad}']) == 2
  assert 'config.json: not valid JSON' in capsys.readouterr().err


def test_multi_stage_workdir_uses_the_stage_that_finished_last(tmp_path):
  for i, stage in enumerate(('mae', 'vit_va', 'fusion')):
    d = tmp_path / stage
    (d / 'checkpoints').mkdir(parents=True)
    (d / 'config.json').write_text('{}')
    if stage != 'fusion':  # fusion has started but not finished
      (d / 'final_metrics.json').write_text('{}')
      os.utime(d / 'final_metrics.json', (time.time() + 10 * i,) * 2)
  assert runs.resolve_workdir(str(tmp_path)) == str(tmp_path / 'vit_va')
  (tmp_path / 'fusion' / 'final_metrics.json').write_text('{}')
  os.utime(tmp_path / 'fusion' / 'final_metrics.json', (time.time() + 100,) * 2)
  assert runs.resolve_workdir(str(tmp_path)) == str(tmp_path / 'fusion')
  assert runs.resolve_workdir(str(tmp_path / 'mae')) == str(tmp_path / 'mae')


@pytest.mark.slow  # two evaluations of the test split
def test_flip_tta_results_have_their_own_names_and_titles(workdir, tmp_path):
  """`--flip_tta` writes beside the plain evaluation (nothing overwritten), and every plot's
  title says what it shows: dataset/split, step, flip TTA."""
  out = tmp_path / 'eval'
  args = [f'--workdir={workdir}', '--split=test', f'--output={out}', '--config.batch_size=96']
  assert evaluate.main(args) == 0
  plain = {p.name: p.read_bytes() for p in out.iterdir()}
  assert evaluate.main([*args, '--flip_tta']) == 0
  flipped = sorted({p.name for p in out.iterdir()} - set(plain))
  assert flipped == sorted(n.replace('_test', '_test_flip_tta') for n in plain)
  assert all((out / n).read_bytes() == b for n, b in plain.items())  # nothing overwritten
  assert json.load(open(out / 'metrics_synthetic_va_test_flip_tta.json'))['flip_tta'] is True
  assert json.load(open(out / 'metrics_synthetic_va_test.json'))['flip_tta'] is False
  for name, what in (('circumplex', 'Predicted and labelled VA'),
                     ('va_scatter', 'Prediction against label'),
                     ('quadrant_confusion', 'Quadrants of the predicted VA')):
    with Image.open(out / f'{name}_synthetic_va_test_flip_tta.png') as im:
      assert im.text['Title'].startswith(f'{what}\nsynthetic_va/test, step 1, flip TTA')
    with Image.open(out / f'{name}_synthetic_va_test.png') as im:
      assert im.text['Title'].startswith(f'{what}\nsynthetic_va/test, step 1')
      assert 'flip' not in im.text['Title']
