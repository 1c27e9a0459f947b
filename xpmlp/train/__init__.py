"""Training: the loop, its settings, and everything a run leaves on disk.

``config``: every setting with its default and check; ``trainer``: the :class:`Trainer` and its
step; ``fitdata``: the checks of a fit's data; ``fitting``: :func:`fit` and resuming;
``runs``: the run directory and its lock; ``checkpoint``: atomic ``.npz`` checkpoints, read
bounded; ``checkpoint_schema``: what a checkpoint must hold, checked before use; ``metrics``:
evaluation; ``health``: training health and its notes; ``reporting``: progress,
metrics.jsonl, curves.png; ``signals``: Ctrl-C and SIGTERM at step boundaries;
``distributed``: MPI data parallelism; ``prepare``: the command line's data, loaded and scaled.

Imports from: xpmlp.errors, xpmlp.files, xpmlp._version, xpmlp.backend, xpmlp.data, xpmlp.core.
"""

from .config import DataConfig, TrainConfig
from .fitting import fit
from .metrics import evaluate
from .runs import RunDir, load_model
from .trainer import Trainer

__all__ = ["DataConfig", "RunDir", "TrainConfig", "Trainer", "evaluate", "fit", "load_model"]
