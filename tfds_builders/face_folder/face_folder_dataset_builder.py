"""face_folder: faces from any folder of your own images and videos, without labels.

The manual_dir is the folder. Every image (and every `video_stride`-th frame of every video) in
it, recursively and in sorted order, is searched for faces with `vaflax.detect` (OpenCV Haar);
the largest `max_faces` faces of an image (the largest one of a video frame) are cropped with
`vaflax.faces.crop_face`, the same crop predict uses. The simplest way to pretrain (MAE) on your
own data. No labels: va_mask 0, emotion -1. One `train` split.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import av
import numpy as np
import tensorflow_datasets as tfds

from vaflax import detect, faces
from vaflax.data import builder_utils as bu
from vaflax.data import video_io
from vaflax.media import decode_rgb

CROP = faces.CropSpec(size=256)  # the default box crop: margin 0.2 around the Haar box, chin in
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif')
VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv')


@dataclasses.dataclass(eq=False)
class FaceFolderConfig(tfds.core.BuilderConfig):
  """video_stride: keep every N-th decoded frame of a video (10: 2.5-3 frames/s at 25-30 fps).
  min_face: smallest face side in source pixels (smaller faces would be upsampled > 6x).
  max_faces: faces kept per image, largest first (video frames keep 1)."""

  video_stride: int = 10
  min_face: int = 40
  max_faces: int = 1


def make_config(video_stride=None, min_face=None, max_faces=None) -> FaceFolderConfig:
  """A config for non-default settings, named after them (its own data_dir sub-folder)."""
  d = FaceFolderConfig(name='default')
  given = dict(video_stride=video_stride, min_face=min_face, max_faces=max_faces)
  vals = {k: int(getattr(d, k) if v is None else v) for k, v in given.items()}
  if min(vals.values()) < 1:
    raise ValueError(f'face_folder: settings must be >= 1, got {vals}')
  name = 'stride{video_stride}_min{min_face}_faces{max_faces}'.format(**vals)
  return FaceFolderConfig(name=name, description='custom settings', **vals)


def read_photo(path: str) -> np.ndarray:
  """RGB uint8 of an image file, upright per its EXIF orientation (phone photos)."""
  try:
    if os.path.getsize(path) == 0:
      raise bu.BadInputError(path, 'empty (zero-byte) image file')
    arr = decode_rgb(path)  # the one image decoder, with the pixel limit
  except bu.BadInputError:
    raise
  except Exception as e:  # PIL raises many types for corrupt/truncated data
    raise bu.BadInputError(path, f'unreadable or truncated image ({type(e).__name__}: {e})') from e
  if arr.ndim != 3 or min(arr.shape[:2]) < 2:
    raise bu.BadInputError(path, f'image has unusable shape {arr.shape}')
  return arr


def list_media(root: str) -> list[tuple[str, str]]:
  """[(relative path, 'image' | 'video' | 'other')] of all non-hidden files, sorted."""
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for f in sorted(filenames):
      if f.startswith('.'):
        continue
      low = f.lower()
      kind = 'image' if low.endswith(IMAGE_EXTS) else 'video' if low.endswith(
          VIDEO_EXTS) else 'other'
      out.append((os.path.relpath(os.path.join(dirpath, f), root), kind))
  return out


class Builder(tfds.core.GeneratorBasedBuilder):
  """Face crops from a folder of your own images and videos; no labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [FaceFolderConfig(
      name='default', description='every 10th video frame, faces >= 40 px, 1 face per image')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Nothing to download: put your images (.jpg .png .bmp .webp .tif .gif) and videos (.mp4 .avi
  .mov .mkv .webm ...) in a folder, in any sub-folder structure, and pass that folder as
  manual_dir. Hidden files and folders (starting with '.') are ignored. Use your own data only
  where you have the right to (faces are personal data).
  """

  def __init__(self, *, video_stride: int | None = None, min_face: int | None = None,
               max_faces: int | None = None, **kwargs):
    if any(v is not None for v in (video_stride, min_face, max_faces)):
      if kwargs.get('config') is not None:
        raise ValueError('face_folder: give either config= or the settings, not both')
      kwargs['config'] = make_config(video_stride, min_face, max_faces)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=bu.frame_features(CROP.size, extra={
            'face_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
            'face_score': tfds.features.Scalar(dtype=np.float32),
            'face_index': tfds.features.Scalar(dtype=np.int32),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            crop=CROP.to_dict(), emotion_names=[],
            va_scale='none: no valence/arousal labels (va_mask 0)',
            video_stride=cfg.video_stride, min_face=cfg.min_face, max_faces=cfg.max_faces,
            face_detector=f'vaflax.detect (OpenCV Haar {detect.CASCADE}), largest first, '
                          f'crop_face margin {CROP.margin}'),
        homepage='https://github.com/vaflax/vaflax',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    media = list_media(root)
    if not any(kind != 'other' for _, kind in media):
      raise bu.BadInputError(
          root, f'no image or video files found (found {len(media)} other files, e.g. '
          f'{[m for m, _ in media[:5]]})', self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    return bu.non_empty_splits(self, {'train': self._generate_examples(root, media)})

  def _example(self, rgb, det, rel, frame, face_index):
    crop, _ = faces.crop_face(rgb, box=det[:4], spec=CROP)
    return bu.default_example(
        image=bu.encode_image(crop), file=rel, frame=frame, face_index=face_index,
        face_box=np.asarray(det[:4], np.float32), face_score=float(det[4]))

  def _video_examples(self, path, rel, skips) -> Iterator[dict]:
    """Faces of every video_stride-th frame, streamed (one frame in memory at a time). `frame`
    is the index in decoding order (vaflax/data/video_io.py `Video.frames`), as in predict."""
    stride, n = self.builder_config.video_stride, 0
    try:
      with video_io.Video(path) as video:
        for k, (_, frame) in enumerate(video.frames()):
          n += 1
          if k % stride:
            continue
          rgb = frame.to_ndarray(format='rgb24')
          dets = detect.detect_faces(rgb, self.builder_config.min_face)
          if not dets:
            skips.skip('no face found (video frame)', f'{rel}#{k}')
            continue
          yield self._example(rgb, dets[0], rel, k, 0)
    except (av.error.FFmpegError, OSError, ValueError) as e:
      if n == 0 and str(e) == video_io.NO_VIDEO_STREAM:
        skips.skip('video file without a video stream', rel)
        return
      reason = ('unreadable video file' if n == 0
                else 'video breaks while decoding (earlier frames kept)')
      skips.skip(reason, f'{rel} ({type(e).__name__}: {e})')
      return
    if n == 0:
      skips.skip('unreadable video file', f'{rel} (no frame decoded)')

  def _generate_examples(self, root, media):
    cfg = self.builder_config
    writer = bu.SplitWriter('train')
    videos = 0
    for rel, kind in media:
      path = os.path.join(root, rel)
      if kind == 'other':
        writer.skips.skip('not an image or video file', rel)
      elif kind == 'video':
        videos += 1
        yield from writer.emit(rel, self._video_examples(path, rel, writer.skips))
      else:
        try:
          rgb = read_photo(path)
        except bu.BadInputError as e:
          writer.skips.skip('unreadable image file', f'{rel} ({e.problem})')
          continue
        dets = detect.detect_faces(rgb, cfg.min_face)
        if not dets:
          writer.skips.skip('no face found', rel)
          continue
        for j, det in enumerate(dets[: cfg.max_faces]):
          yield from writer.emit(rel if j == 0 else f'{rel}#{j}',
                                 [self._example(rgb, det, rel, -1, j)])
    if not videos:
      writer.videos.clear()  # images only: no video table (each record stands alone)
    writer.finish(self)
