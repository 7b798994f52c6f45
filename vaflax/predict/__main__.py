import sys

from vaflax.predict.cli import main

sys.exit(main())
