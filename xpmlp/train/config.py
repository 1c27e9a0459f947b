"""Every setting of a training run, with its default and its validation, in one place.

:class:`TrainConfig` is what :class:`~xpmlp.train.trainer.Trainer`, :func:`~xpmlp.train.fitting.fit`, the
command line (its flags and their defaults) and the checkpoint metadata share; :class:`DataConfig`
is where the command line's data comes from and how it is prepared. The model's own settings
(layer sizes, activation, dropout, L2 penalty, init, dtype, seed) are :meth:`MLP.config`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

from ..core.optim import OPTIMIZERS, SCHEDULES
from ..data.datasets import looks_like_name
from ..data.inputs import SCALING_METHODS
from ..errors import ConfigError

BUILTIN_DATASETS = ("fashion-mnist", "mnist")
MAX_WARMUP_EPOCHS = 1e9  # times the steps of an epoch, still an integer a float can hold


class _Settings:
    """Shared by the config dataclasses: dict round trip and validated copies."""

    def to_dict(self) -> dict:
        """The settings as JSON stores them (tuples as lists), so a saved run compares equal."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict):
        """Rebuild from :meth:`to_dict`; unknown names are an error, missing ones take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _integer(name: str, value, low: int, *, high: int | None = None, optional=False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be at most {high:,}; got {value:,}")


def _number(name: str, value, *, low: float, high: float = math.inf, open_low=False,
            open_high=False, optional: bool = False) -> None:  # fmt: skip
    if optional and value is None:
        return
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    ok = ok and (value < high if open_high else value <= high)
    if not ok:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ConfigError(f"{name} must be a finite number in {interval}; got {value!r}")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


MAX_GRAD_SHARDS = 4096  # more processes than any data-parallel job of an MLP uses


@dataclass(frozen=True)
class TrainConfig(_Settings):
    """How a model is trained.

    Parameters
    ----------
    optimizer : str
        sgd, momentum, nesterov, adam or adamw (torch.optim semantics).
    lr : float
        Base learning rate.
    momentum : float
        For momentum and nesterov.
    betas, eps : (float, float), float
        Adam's and AdamW's moment decay rates and the term added to the denominator.
    weight_decay : float
        AdamW's decoupled decay (``p *= 1 - lr * weight_decay`` each step), adamw only. The L2
        penalty in the loss is the model's ``l2``.
    batch_size, epochs : int
    schedule : str
        constant, step or cosine (laid out over ``epochs``), after ``warmup_epochs`` of linear
        warm-up; step multiplies by ``gamma`` every ``step_epochs``.
    clip_norm : float or None
        Clip gradients to this global L2 norm.
    early_stopping : int or None
        Patience in epochs on the validation loss (the training loss without validation data);
        when it runs out, training stops and the best weights are restored.
    seed : int
        Seeds batch order and dropout masks (together with the epoch number).
    shuffle : bool
        Visit the training set in a new seeded order each epoch.
    checkpoint_every, keep_checkpoints : int
        In a run directory: write a checkpoint every N epochs (and at the end); keep the newest K.
    grad_shards : int
        Split each batch into this many contiguous slices and sum their gradients, each weighted
        by its share of the batch, in slice order: what a data-parallel run over that many
        processes computes, bit for bit (see :mod:`xpmlp.train.distributed`). 1: the whole batch.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 10
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    step_epochs: int = 10
    gamma: float = 0.1
    clip_norm: float | None = None
    early_stopping: int | None = None
    seed: int = 0
    shuffle: bool = True
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    grad_shards: int = 1

    def __post_init__(self):
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _number("lr", self.lr, low=0, open_low=True)
        _number("momentum", self.momentum, low=0, high=1, open_high=True)
        if not isinstance(self.betas, tuple | list) or len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers in [0, 1); got {self.betas!r}")
        for beta in self.betas:
            _number("each of betas", beta, low=0, high=1, open_high=True)
        object.__setattr__(self, "betas", tuple(float(beta) for beta in self.betas))  # from JSON
        _number("eps", self.eps, low=0, open_low=True)
        _number("weight_decay", self.weight_decay, low=0)
        if self.weight_decay and self.optimizer != "adamw":
            raise ConfigError(
                f"weight_decay is AdamW's decoupled decay and {self.optimizer} has none; use "
                "optimizer adamw, or the model's L2 penalty (MLP(l2=...), --l2)"
            )
        _integer("batch_size", self.batch_size, 1)
        _integer("epochs", self.epochs, 0)
        _choice("schedule", self.schedule, SCHEDULES)
        _number("warmup_epochs", self.warmup_epochs, low=0, high=MAX_WARMUP_EPOCHS)
        _integer("step_epochs", self.step_epochs, 1)
        _number("gamma", self.gamma, low=0, open_low=True)
        _number("clip_norm", self.clip_norm, low=0, open_low=True, optional=True)
        _integer("early_stopping", self.early_stopping, 1, optional=True)
        _integer("seed", self.seed, 0)
        if not isinstance(self.shuffle, bool):
            raise ConfigError(f"shuffle must be True or False; got {self.shuffle!r}")
        _integer("checkpoint_every", self.checkpoint_every, 1)
        _integer("keep_checkpoints", self.keep_checkpoints, 1)
        # each shard holds a gradient buffer: a huge count would exhaust memory, not train
        _integer("grad_shards", self.grad_shards, 1, high=MAX_GRAD_SHARDS)


@dataclass(frozen=True)
class DataConfig(_Settings):
    """Where the command line's data comes from and how it is prepared.

    Parameters
    ----------
    dataset : str
        A built-in name (fashion-mnist, mnist) or a .npz (arrays X, y) / .csv file.
    test_dataset : str or None
        A .npz/.csv test set for a file ``dataset``.
    data_dir : str or None
        A directory holding a built-in dataset's IDX files.
    label_column : str
        The label column of a CSV file: a name or an integer index.
    scaling : str
        unit, standard or none (see :class:`xpmlp.data.inputs.Scaler`), with training statistics.
    val_fraction : float
        Fraction of the training set held out for validation, split with the run's seed.
    download : bool
        Whether a missing built-in dataset may be downloaded.
    """

    dataset: str = "fashion-mnist"
    test_dataset: str | None = None
    data_dir: str | None = None
    label_column: str = "label"
    scaling: str = "unit"
    val_fraction: float = 0.0
    download: bool = True

    def __post_init__(self):
        _choice("scaling", self.scaling, SCALING_METHODS)
        if self.builtin and self.test_dataset is not None:
            raise ConfigError(
                f"--test-dataset is for a file --dataset; {self.dataset} brings its own test set"
            )
        _number("val_fraction", self.val_fraction, low=0, high=1, open_high=True)

    @property
    def builtin(self) -> bool:
        return self.dataset in BUILTIN_DATASETS

    def absolute(self) -> DataConfig:
        """The same settings with file paths made absolute, so a run resumes from anywhere. A
        name that is no file (a misspelled built-in) stays as typed, for the error naming it."""

        def resolve(path):
            return None if path is None else str(Path(path).expanduser().resolve())

        is_name = looks_like_name(self.dataset) and not Path(self.dataset).expanduser().exists()
        dataset = self.dataset if self.builtin or is_name else resolve(self.dataset)
        return self.replace(
            dataset=dataset,
            test_dataset=resolve(self.test_dataset),
            data_dir=resolve(self.data_dir),
        )
