"""The package version.

Imports from: nothing in xpmlp.
"""

__version__ = "0.1.0"
