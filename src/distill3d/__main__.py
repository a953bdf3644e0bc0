"""``python -m distill3d`` (and ``torchrun -m distill3d``) runs the command line."""

import sys

from distill3d.cli import main

sys.exit(main())
