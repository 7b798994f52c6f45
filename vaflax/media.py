"""The one image reader, and the pixel limit that bounds the work of every image and video frame.

Files read here come from anywhere (scraped photos, organisers' folders), so a file's own numbers
are checked before they cost memory: the pixel count from the header is compared with
`max_pixels` before anything is decoded (a 140 KB PNG can declare 12000 x 12000 pixels, 432 MB
of RGB). What PIL refuses on its own (its decompression-bomb guard, truncated or corrupt data)
becomes the same `InputError` naming the file. The dataset builders decode with `decode_rgb`
(vaflax/data/builder_utils.py); the video reader uses `check_pixels` on its frame size
(vaflax/predict/decode.py).
"""

from __future__ import annotations

import os

import numpy as np

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv',
              '.3gp', '.ts')

# Pixels of one image or video frame (width x height) read at most: 50 MP keeps every phone
# photo up to 8160 x 6120 (50 MP sensors) and refuses what only a crafted or scientific file
# holds. Decoded RGB of 50 MP is 150 MB. `--max_pixels` changes it.
MAX_PIXELS = 50_000_000


class InputError(Exception):
  """An input that cannot be read; the message names the file."""


def check_pixels(path, width: int, height: int, max_pixels: int, what: str) -> None:
  """Raises InputError when a `width` x `height` image or frame is over `max_pixels`."""
  if width * height > max_pixels:
    raise InputError(f'{os.fspath(path)}: {what} ({width} x {height} = {width * height:,} '
                     f'pixels is over the pixel limit of {max_pixels:,}; raise it with '
                     '--max_pixels)')


def decode_rgb(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """RGB uint8 of an image file, upright per its EXIF orientation (phone photos), decoded fully
  (a truncated file raises). The decoding itself, for readers that word errors their own way
  (the dataset builders' skip reasons): PIL's exceptions pass through; an image over
  `max_pixels` raises InputError before it is decoded."""
  from PIL import Image, ImageOps  # noqa: PLC0415

  with Image.open(path) as im:
    check_pixels(path, *im.size, max_pixels, 'cannot read as an image')
    im.load()
    return np.asarray(ImageOps.exif_transpose(im).convert('RGB'))


def read_image(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """`decode_rgb`, with every failure (empty, corrupt, truncated, oversized, a decompression
  bomb) an InputError naming the file: predict, --cropped and abaw."""
  path = os.fspath(path)
  what = 'cannot read as an image'
  try:
    if os.path.getsize(path) == 0:
      raise InputError(f'{path}: {what} (empty file, 0 bytes)')
    arr = decode_rgb(path, max_pixels)
  except InputError:
    raise
  except OSError as e:  # missing, unreadable, not an image, truncated
    raise InputError(f'{path}: {what} ({type(e).__name__}: {e.strerror or e})') from None
  except Exception as e:  # noqa: BLE001 -- PIL raises many types (DecompressionBombError, ...)
    raise InputError(f'{path}: {what} ({type(e).__name__}: {e})') from None
  if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
    raise InputError(f'{path}: {what} (unusable shape {arr.shape})')
  return arr
