"""Data on the host: IDX files, the built-in datasets, the user's own files, input checks, scaling.

``idx`` reads and writes IDX files; ``datasets`` finds, downloads and loads MNIST and
Fashion-MNIST; ``userdata`` reads a user's ``.npz``/``.csv``; ``inputs`` checks features and
labels (on the host, or on a device through ``xp``) and scales them (:class:`Scaler`);
``fingerprint`` sums up what a run was trained on, to refuse resuming it on other data.

Imports from: xpmlp.errors, xpmlp.files, xpmlp.machine, xpmlp.backend.
"""

from .datasets import Dataset, load_dataset
from .inputs import Scaler
from .userdata import load_arrays, load_features

__all__ = ["Dataset", "Scaler", "load_arrays", "load_dataset", "load_features"]
