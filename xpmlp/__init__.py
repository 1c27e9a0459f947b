"""xpmlp: a multilayer-perceptron trainer written once against the Array API.

NumPy on the CPU, CuPy on CUDA GPUs, chosen at run time::

    import xpmlp
    model = xpmlp.MLP([784, 300, 300, 10], device="auto")
    history = xpmlp.fit(model, X_train, y_train, epochs=10, validation_data=(X_val, y_val))

The package's door: its public names, from the layers below (docs/architecture.md). The
ground is ``errors``, ``files``, ``machine`` and ``backend``; above it ``data``, ``core``, ``train``, then
``doctor``, ``sklearn`` and ``cli``.
"""

import signal as _signal
import threading as _threading

# A Ctrl-C that lands while the package imports would raise inside whatever import machinery runs
# then (Python prints "Exception ignored ... KeyboardInterrupt" and carries on); it is held until
# the imports are done instead, and raised there.
_held: list[int] = []
_holding = (
    _threading.current_thread() is _threading.main_thread()
    and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler
)
if _holding:
    _signal.signal(_signal.SIGINT, lambda signum, frame: _held.append(signum))
try:
    from . import doctor
    from ._version import __version__
    from .backend import Backend, get_backend, to_numpy
    from .core import MLP, LayerRecord, Schedule, clip_grad_norm, gradcheck, make_optimizer
    from .data import Scaler
    from .errors import (
        CheckpointError,
        ConfigError,
        DataError,
        DeviceError,
        DivergedError,
        NonFiniteError,
        XpmlpError,
    )
    from .moved import keep_old_paths
    from .train import (
        DataConfig,
        RunDir,
        TrainConfig,
        Trainer,
        distributed,
        evaluate,
        fit,
        load_model,
    )

    keep_old_paths(globals())
finally:
    if _holding:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
if _held:
    raise KeyboardInterrupt

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
    "distributed",
    "doctor",
    "evaluate",
    "fit",
    "get_backend",
    "gradcheck",
    "load_model",
    "make_optimizer",
    "to_numpy",
]
