"""vaflax.data.build's console: it says what it does (generating, not downloading)."""

import logging as py_logging

from absl import logging

from vaflax.data import build


class _FakeBuilder:
  """What TFDS's download_and_prepare prints and logs while it writes a dataset."""

  name, version, data_dir = 'synthetic_va', '1.0.0', '/data/synthetic_va/1.0.0'

  def download_and_prepare(self, download_config):
    print('Downloading and preparing dataset Unknown size (download: Unknown size, generated: '
          'Unknown size, total: Unknown size) to /data/synthetic_va/1.0.0...')
    logging.warning('Variant folder %s has no %s', '/data/synthetic_va/1.0.0', 'dataset_info.json')
    logging.warning('Split %s has no filename template, skipping.', 'test')
    print('Dataset synthetic_va downloaded and prepared to /data/synthetic_va/1.0.0. '
          'Subsequent calls will reuse this data.')
    print('a line of the builder')


def test_synthetic_build_says_it_generates_and_keeps_other_messages(monkeypatch, capsys):
  records = []
  handler = py_logging.Handler()
  handler.emit = records.append
  absl_logger = py_logging.getLogger('absl')
  absl_logger.addHandler(handler)
  monkeypatch.setattr(build, 'make_builder', lambda *a, **k: _FakeBuilder())
  try:
    build.build('synthetic_va', '/data', verbose=False)
  finally:
    absl_logger.removeHandler(handler)
  out = capsys.readouterr().out
  assert out.splitlines() == [
      'Generating synthetic_va 1.0.0 (drawn procedurally, nothing is downloaded) into '
      '/data/synthetic_va/1.0.0 ...', 'a line of the builder']
  assert [r.getMessage() for r in records] == ['Split test has no filename template, skipping.']
  assert not any(f.__class__.__name__ == '_NoVariantFolderWarning' for f in absl_logger.filters)
