"""``python -m pytest_circuits``: the same command line as the ``pytest-circuits`` script."""

import sys

from .cli import main

sys.exit(main())
