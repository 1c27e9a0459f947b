"""``python -m xpmlp``: the same as the ``xpmlp`` command."""

import sys

from .cli import main

sys.exit(main())
