"""xpmlp: a multilayer-perceptron trainer written once against the Array API.

NumPy on the CPU, CuPy on CUDA GPUs, chosen at run time::

    import xpmlp
    model = xpmlp.MLP([784, 300, 300, 10], device="auto")
    history = xpmlp.fit(model, X_train, y_train, epochs=10, validation_data=(X_val, y_val))
"""

from ._version import __version__
from .backend import Backend, get_backend, to_numpy
from .config import DataConfig, TrainConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    DivergedError,
    NonFiniteError,
    XpmlpError,
)
from .fitting import fit
from .gradcheck import gradcheck
from .inputs import Scaler
from .metrics import evaluate
from .model import MLP, LayerRecord
from .optim import Schedule, clip_grad_norm, make_optimizer
from .runs import RunDir, load_model
from .training import Trainer

__all__ = [
    "__version__",
    "MLP",
    "Backend",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DeviceError",
    "DivergedError",
    "LayerRecord",
    "NonFiniteError",
    "RunDir",
    "Scaler",
    "Schedule",
    "TrainConfig",
    "Trainer",
    "XpmlpError",
    "clip_grad_norm",
    "evaluate",
    "fit",
    "get_backend",
    "gradcheck",
    "load_model",
    "make_optimizer",
    "to_numpy",
]
