"""python -m vaflax.export --workdir=W --format=onnx|stablehlo --output=DIR [--flip_tta=true|false]
    [--config.a.b=value ...]

Writes DIR/face.<ext> (the run's face model with its preprocessing), DIR/detector.<ext>
(BlazeFace) and DIR/export.json (docs/deploy.md).
"""

from __future__ import annotations

import sys

from vaflax import cli


@cli.entry_point
def main(argv) -> int:
  p = cli.parser('vaflax.export', __doc__, line=3)
  p.add_argument('--workdir', required=True, help='a training workdir or vaflax.convert output')
  p.add_argument('--format', required=True, choices=('onnx', 'stablehlo'))
  p.add_argument('--output', required=True, help='the folder to write')
  p.add_argument('--flip_tta', choices=('true', 'false'), default=None,
                 help="mean over each crop and its mirror inside the graph (default: the run's "
                 'config.eval.flip_tta)')
  args, overrides = cli.parse(p, argv, overrides=True)
  from vaflax import export  # noqa: PLC0415

  flip = None if args.flip_tta is None else args.flip_tta == 'true'
  m = export.export_run(args.workdir, args.format, args.output, overrides=overrides, flip_tta=flip)
  face = m['face']
  outs = ', '.join(f"{o['name']} {o['shape']}" for o in face['outputs'])
  print(f"face: {face['file']} ({face['model_name']}, crop {face['crop']}, "
        f"flip TTA {face['flip_tta']}): {outs}")
  print(f"detector: {m['detector']['file']} (NMS outside the graph: export.json 'nms')")
  return cli.wrote(args.output, m['licence']['terms'], sum(m['export_seconds'].values()))


if __name__ == '__main__':
  sys.exit(main())
