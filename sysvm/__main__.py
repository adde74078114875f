"""python -m sysvm: the same commands as the `sysvm` console script."""

import sys

from sysvm.cli import main

sys.exit(main())
