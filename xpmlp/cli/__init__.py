"""The command line: ``xpmlp train``, ``evaluate``, ``predict``, ``plot``, ``doctor``, ``device``.

``parser``: the flags; ``train``: a run, new or resumed; ``results``: evaluate, predict, plot;
``main``: the subcommands, and user errors as one line and exit status 2.

Imports from: everything in xpmlp but xpmlp.sklearn.
"""

from .main import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
