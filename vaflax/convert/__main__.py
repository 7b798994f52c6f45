"""python -m vaflax.convert --format=emonet|torchvision_resnet|mae|fan --input=FILE --workdir=OUT [--variant=V]

Writes OUT as a run directory (docs/pretrained.md: where to get each file, its licence, its
preprocessing). Prints what was loaded, what was left new and what was ignored.
"""

from __future__ import annotations

import argparse
import sys
import time

from vaflax import convert


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m vaflax.convert', description=__doc__.split('\n')[2])
  p.add_argument('--format', required=True, choices=convert.FORMATS)
  p.add_argument('--input', required=True, help='.pth / .pt / .bin / .safetensors file')
  p.add_argument('--workdir', required=True, help='the run directory to write')
  p.add_argument('--variant', default='', help="ResNet depth (50) or ViT 'B/16'; default: "
                 'from the tensors')
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  c = convert.convert(args.format, args.input, args.variant)
  out = convert.write_run(c, args.workdir)
  print(c.report.summary())  # its "kept their initial value" are the format's new weights
  print(f'  ignored on purpose ({len(c.ignored)}): {", ".join(c.ignored[:12]) or "nothing"}'
        f'{" ..." if len(c.ignored) > 12 else ""}')
  print(f'preprocessing: {c.config.input.pp_eval}')
  print(f'licence: {convert.format_module(args.format).LICENCE}')
  print(f'wrote {out} in {time.perf_counter() - t0:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
