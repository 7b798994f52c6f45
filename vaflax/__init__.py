"""vaflax: valence/arousal estimation from faces, video and audio in JAX/Flax NNX."""

import os
import sys

# Variables carry logical sharding names as metadata only; vaflax.sharding maps them to the mesh
# with the rules of the config (with a divisibility check) and places the state itself. Flax's
# eager sharding would instead require a mesh at model construction, even in a unit test.
# Importing vaflax does not import Flax (nor JAX): `python -m vaflax.export.run` needs neither
# (docs/deploy.md). Flax reads the flag from its environment variable when it is first imported;
# if it already is, the flag is set directly.
if 'flax' in sys.modules:
  sys.modules['flax'].config.update('flax_always_shard_variable', False)
else:
  os.environ['FLAX_ALWAYS_SHARD_VARIABLE'] = 'false'

__version__ = '0.1.0'


def load(workdir: str, **kwargs):
  """`vaflax.load(workdir)`: a run with predict(faces) and embed(faces) (vaflax/api.py)."""
  from vaflax import api  # noqa: PLC0415 -- jax is imported only when a run is loaded

  return api.load(workdir, **kwargs)
