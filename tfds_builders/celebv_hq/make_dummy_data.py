"""Writes dummy_data/ for celebv_hq: a tiny celebvhq_info.json with the real keys, one raw
"YouTube" video and three clips as download_and_process.py would have processed them.

  python -m tfds_builders.celebv_hq.make_dummy_data

Faces come from vaflax.data.synthetic_faces. The raw video (112x64, 25 fps, 1.6 s) shows a
different identity and tone in each of [0, 0.4), [0.4, 1.0), [1.0, 1.6) s, with the face always
at x 40..104, which the json bbox (expanded and squared like the official script) crops exactly.
Covered: a whole-clip label, time segments with a gap, an unknown label ('confused'), the
'angry' spelling, contempt (no VA point), a processed clip without audio, a missing video, a
bad attribute list and a bad time span. Clip ids are chosen so that md5(ytb_id) puts them in
train (M2Ohb0FAaJU, _0tf2n3rlJU, Kq3vB7xT1pE), validation (aS1dF3gH5jK), test (8fNYvvDbzDZ).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from tfds_builders.omg_emotion.make_dummy_data import GREEN, face_frames, tone
from vaflax.data import video_io

OUT = os.path.join(os.path.dirname(__file__), 'dummy_data')
SR = 16000
APPEARANCE = [
    'blurry', 'male', 'young', 'chubby', 'pale_skin', 'rosy_cheeks', 'oval_face',
    'receding_hairline', 'bald', 'bangs', 'black_hair', 'blonde_hair', 'gray_hair', 'brown_hair',
    'straight_hair', 'wavy_hair', 'long_hair', 'arched_eyebrows', 'bushy_eyebrows',
    'bags_under_eyes', 'eyeglasses', 'sunglasses', 'narrow_eyes', 'big_nose', 'pointy_nose',
    'high_cheekbones', 'big_lips', 'double_chin', 'no_beard', '5_o_clock_shadow', 'goatee',
    'mustache', 'sideburns', 'heavy_makeup', 'wearing_earrings', 'wearing_hat',
    'wearing_lipstick', 'wearing_necklace', 'wearing_necktie', 'wearing_mask']
ACTION = [
    'blow', 'chew', 'close_eyes', 'cough', 'cry', 'drink', 'eat', 'frown', 'gaze', 'glare',
    'head_wagging', 'kiss', 'laugh', 'listen_to_music', 'look_around', 'make_a_face', 'nod',
    'play_instrument', 'read', 'shake_head', 'shout', 'sigh', 'sing', 'sleep', 'smile', 'smoke',
    'sneer', 'sneeze', 'sniff', 'talk', 'turn', 'weep', 'whisper', 'wink', 'yawn']
# (seed, tone Hz) of the raw video's three parts of 10, 15 and 15 frames.
RAW_PARTS = ((5, 220, 10), (4, 440, 15), (9, 660, 15))
FACE_X0 = 40


def raw_frames() -> np.ndarray:
  parts = []
  for seed, _, n in RAW_PARTS:
    f = face_frames(seed, n, left=True)[:, :, :64]  # the 64x64 face
    canvas = np.empty((n, 64, 112, 3), np.uint8)
    canvas[:] = GREEN
    canvas[:, :, FACE_X0 : FACE_X0 + 64] = f
    parts.append(canvas)
  return np.concatenate(parts)


def attrs(i, n):
  return [int((k * 7 + i) % 5 == 0) for k in range(n)]


def clip(ytb, start, end, emotion, i, **over):
  c = {'ytb_id': ytb, 'duration': {'start_sec': start, 'end_sec': end},
       'bbox': {'top': 0.0, 'bottom': 1.0, 'left': round(FACE_X0 / 112, 4),
                'right': round((FACE_X0 + 64) / 112, 4)},
       'attributes': {'appearance': attrs(i, 40), 'action': attrs(i + 1, 35), 'emotion': emotion},
       'version': 'v0.1'}
  c.update(over)
  return c


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  raw = os.path.join(OUT, 'downloaded_celebvhq', 'raw')
  proc = os.path.join(OUT, 'downloaded_celebvhq', 'processed')
  os.makedirs(raw)
  os.makedirs(proc)
  audio = np.concatenate([tone(hz, n / 25) for _, hz, n in RAW_PARTS])
  video_io.write_mp4(os.path.join(raw, 'M2Ohb0FAaJU.mp4'), raw_frames(), 25, audio=audio)
  for name, seed, n, hz in (('_0tf2n3rlJU_0', 10, 10, None), ('aS1dF3gH5jK_0', 9, 8, 550),
                            ('8fNYvvDbzDZ_0', 5, 8, 770)):
    video_io.write_mp4(os.path.join(proc, f'{name}.mp4'), face_frames(seed, n)[:, :, :64], 25,
                       audio=tone(hz, n / 25) if hz else None)
  single = lambda name: {'sep_flag': False, 'labels': name}
  clips = {
      'M2Ohb0FAaJU_0': clip('M2Ohb0FAaJU', 0.4, 1.0, single('happy'), 0),
      'M2Ohb0FAaJU_1': clip('M2Ohb0FAaJU', 1.0, 1.6, {'sep_flag': True, 'labels': [
          {'emotion': 'neutral', 'start_sec': 0, 'end_sec': 0.2},
          {'emotion': 'sad', 'start_sec': 0.32, 'end_sec': 0.6000000000000001}]}, 1),
      'M2Ohb0FAaJU_2': clip('M2Ohb0FAaJU', 0.0, 0.2, single('confused'), 2),
      'M2Ohb0FAaJU_3': clip('M2Ohb0FAaJU', 0.2, 0.4, single('happy'), 3),
      'Kq3vB7xT1pE_0': clip('Kq3vB7xT1pE', 3.0, 5.0, single('happy'), 4),  # not downloaded
      'Kq3vB7xT1pE_1': clip('Kq3vB7xT1pE', 5.0, 4.0, single('happy'), 5),  # end before start
      '_0tf2n3rlJU_0': clip('_0tf2n3rlJU', 52.72, 53.12, single('contempt'), 6),
      'aS1dF3gH5jK_0': clip('aS1dF3gH5jK', 10.0, 10.32, single('angry'), 7),
      '8fNYvvDbzDZ_0': clip('8fNYvvDbzDZ', 1.5, 1.82, single('surprise'), 8),
  }
  clips['M2Ohb0FAaJU_3']['attributes']['appearance'] = attrs(3, 39)  # one attribute short
  info = {'meta_info': {'appearance_mapping': APPEARANCE, 'action_mapping': ACTION},
          'clips': clips}
  with open(os.path.join(OUT, 'celebvhq_info.json'), 'w') as f:
    json.dump(info, f)


if __name__ == '__main__':
  main()
