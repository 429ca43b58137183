"""`python -m msunet` runs the command line."""

import sys

from msunet.cli import main

sys.exit(main())
