"""python -m vaflax.convert --format=emonet|torchvision_resnet|mae|fan|speech --input=FILE --workdir=OUT [--variant=V]

Writes OUT as a run directory (docs/pretrained.md: where to get each file, its licence, its
preprocessing). Prints what was loaded, what was left new and what was ignored.
"""

from __future__ import annotations

import sys
import time

from vaflax import cli, convert


# A file that cannot be converted (unreadable, hostile, not this format, missing, a workdir in
# use) is one line and exit 2 (cli.entry_point); a bug keeps its traceback.
@cli.entry_point
def main(argv) -> int:
  p = cli.parser('vaflax.convert', __doc__, line=2)
  p.add_argument('--format', required=True, choices=convert.FORMATS)
  p.add_argument('--input', required=True, help='.pth / .pt / .bin / .safetensors file')
  p.add_argument('--workdir', required=True, help='the run directory to write')
  p.add_argument('--variant', default='', help="ResNet depth (50) or ViT 'B/16'; default: "
                 'from the tensors')
  args = cli.parse(p, argv)
  t0 = time.perf_counter()
  c = convert.convert(args.format, args.input, args.variant)
  out = convert.write_run(c, args.workdir)
  print(c.report.summary())  # its "kept their initial value" are the format's new weights
  print(f'  ignored on purpose ({len(c.ignored)}): {", ".join(c.ignored[:12]) or "nothing"}'
        f'{" ..." if len(c.ignored) > 12 else ""}')
  mod = convert.format_module(args.format)
  print(f'preprocessing: {getattr(mod, "PREPROCESSING", c.config.input.pp_eval)}')
  return cli.wrote(out, mod.LICENCE, time.perf_counter() - t0)


if __name__ == '__main__':
  sys.exit(main())
