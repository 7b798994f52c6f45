"""python -m vaflax.export --workdir=W --format=onnx|stablehlo --output=DIR [--flip_tta=true|false]
    [--config.a.b=value ...]

Writes DIR/face.<ext> (the run's face model with its preprocessing), DIR/detector.<ext>
(BlazeFace) and DIR/export.json (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a[len('--config.'):] for a in argv if a.startswith('--config.')]
  rest = [a for a in argv if not a.startswith('--config.')]
  p = argparse.ArgumentParser(prog='python -m vaflax.export', description=__doc__.split('\n')[3])
  p.add_argument('--workdir', required=True, help='a training workdir or vaflax.convert output')
  p.add_argument('--format', required=True, choices=('onnx', 'stablehlo'))
  p.add_argument('--output', required=True, help='the folder to write')
  p.add_argument('--flip_tta', choices=('true', 'false'), default=None,
                 help="mean over each crop and its mirror inside the graph (default: the run's "
                 'config.eval.flip_tta)')
  args = p.parse_args(rest)
  from vaflax import export  # noqa: PLC0415

  flip = None if args.flip_tta is None else args.flip_tta == 'true'
  try:
    m = export.export_run(args.workdir, args.format, args.output, overrides=overrides,
                          flip_tta=flip)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  face = m['face']
  outs = ', '.join(f"{o['name']} {o['shape']}" for o in face['outputs'])
  print(f"face: {face['file']} ({face['model_name']}, crop {face['crop']}, "
        f"flip TTA {face['flip_tta']}): {outs}")
  print(f"detector: {m['detector']['file']} (NMS outside the graph: export.json 'nms')")
  print(f"licence: {m['licence']['terms']}")
  print(f"wrote {args.output} in {sum(m['export_seconds'].values()):.1f} s")
  return 0


if __name__ == '__main__':
  sys.exit(main())
