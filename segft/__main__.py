"""``python -m segft`` runs the ``segft`` command line."""

import sys

from segft.cli import main

sys.exit(main())
