"""The `get_config(arg)` argument parser, and the shared defaults (vaflax/presets.py).

`arg` is the text after ':' in --config=configs/x.py:arg, e.g. 'runlocal' or
'variant=50,dataset=afew_va'. Bare words are booleans set to True; values are parsed as
--config.x=y overrides are (vaflax/cli.py: the one parser).
"""

from __future__ import annotations

from vaflax.cli import parse_arg  # noqa: F401 -- the configs call common.parse_arg

# The base config and the presets shared with library code live in vaflax/presets.py (configs/
# import vaflax, never the other way); re-exported for the configs.
from vaflax.presets import (  # noqa: F401
    DEFAULT_DATA_DIR,
    FSDP_RULES,
    IMAGENET_PP,
    base_config,
    imagenet_inputs,
)
