"""The `get_config(arg)` argument parser, and the shared defaults (vaflax/presets.py).

`arg` is the text after ':' in --config=configs/x.py:arg, e.g. 'runlocal' or
'variant=50,dataset=afew_va'. Bare words are booleans set to True.
"""

from __future__ import annotations

import ml_collections

# The base config and the presets shared with library code live in vaflax/presets.py (configs/
# import vaflax, never the other way); re-exported for the configs.
from vaflax.presets import (  # noqa: F401
    DEFAULT_DATA_DIR,
    FSDP_RULES,
    IMAGENET_PP,
    base_config,
    imagenet_inputs,
)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'runlocal,variant=50' -> ConfigDict(runlocal=True, variant=50); types follow the defaults."""
  out = dict(defaults)
  for part in (p.strip() for p in (arg or '').split(',')):
    if not part:
      continue
    key, eq, value = part.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; known: {", ".join(sorted(defaults))}')
    if not eq:
      out[key] = True
      continue
    d = defaults[key]
    if isinstance(d, bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    elif isinstance(d, int):
      out[key] = int(value)
    elif isinstance(d, float):
      out[key] = float(value)
    else:
      out[key] = value
  return ml_collections.ConfigDict(out)
