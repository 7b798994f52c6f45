"""python -m vaflax.convert --format=emonet|torchvision_resnet|mae|fan|speech --input=FILE --workdir=OUT [--variant=V]

Writes OUT as a run directory (docs/pretrained.md: where to get each file, its licence, its
preprocessing). Prints what was loaded, what was left new and what was ignored.
"""

from __future__ import annotations

import argparse
import sys
import time

from vaflax import checkpoint, convert
from vaflax.convert.errors import CheckpointError, printable

# A file that cannot be converted (unreadable, hostile, not this format, missing, a workdir in
# use): one line and exit 2. Anything else is a bug and keeps its traceback.
BAD_INPUT = (CheckpointError, checkpoint.CheckpointMismatchError, OSError)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m vaflax.convert', description=__doc__.split('\n')[2])
  p.add_argument('--format', required=True, choices=convert.FORMATS)
  p.add_argument('--input', required=True, help='.pth / .pt / .bin / .safetensors file')
  p.add_argument('--workdir', required=True, help='the run directory to write')
  p.add_argument('--variant', default='', help="ResNet depth (50) or ViT 'B/16'; default: "
                 'from the tensors')
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  try:
    c = convert.convert(args.format, args.input, args.variant)
    out = convert.write_run(c, args.workdir)
  except BAD_INPUT as e:
    print(f'{p.prog}: {type(e).__name__}: {printable(e, 2000)}', file=sys.stderr)
    return 2
  print(c.report.summary())  # its "kept their initial value" are the format's new weights
  print(f'  ignored on purpose ({len(c.ignored)}): {", ".join(c.ignored[:12]) or "nothing"}'
        f'{" ..." if len(c.ignored) > 12 else ""}')
  mod = convert.format_module(args.format)
  print(f'preprocessing: {getattr(mod, "PREPROCESSING", c.config.input.pp_eval)}')
  print(f'licence: {convert.format_module(args.format).LICENCE}')
  print(f'wrote {out} in {time.perf_counter() - t0:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
