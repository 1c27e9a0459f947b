"""The contestants: one training loop per framework, all with the same interface.

Each trains a workload's network on a training set it was given, one epoch per :meth:`epoch`,
and is timed from outside between two :meth:`sync` calls. Frameworks that are not installed are
skipped by :func:`available`.

- ``xpmlp``: the package's own loop (:meth:`xpmlp.train.trainer.Trainer.train_epoch`).
- ``torch`` / ``torch.compile``: a plain idiomatic loop: ``nn.Sequential`` of ``nn.Linear`` and
  ``nn.ReLU``, ``nn.CrossEntropyLoss``, ``torch.optim.Adam`` (default foreach), data as tensors on
  the device, each batch gathered by indexing with a slice of the epoch's permutation. It starts
  from xpmlp's initial weights and visits batches in xpmlp's order, and like xpmlp it
  accumulates the epoch's loss and correct count on the device (read once per epoch).
- ``sklearn``: ``MLPClassifier(solver="adam", alpha=0, learning_rate_init=1e-3, shuffle=True)``,
  one ``partial_fit`` (one epoch) per call; its own Glorot initialisation.
"""

from __future__ import annotations

import importlib.util
import itertools
import warnings

import numpy as np
from workloads import LR, N_CLASSES, Workload

EVAL_BATCH = 8192


def available(name: str) -> bool:
    module = {"torch": "torch", "torch.compile": "torch", "sklearn": "sklearn"}.get(name, name)
    return importlib.util.find_spec(module) is not None


class Xpmlp:
    name = "xpmlp"

    def __init__(self, workload: Workload, X, y, *, device: str = "cpu", seed: int = 0):
        import xpmlp
        from xpmlp.train.trainer import Trainer

        self.model = xpmlp.MLP(workload.layer_sizes, device=device, seed=seed)
        self.trainer = Trainer(
            self.model, optimizer="adam", lr=LR, batch_size=workload.batch, epochs=2**31, seed=seed
        )
        self.X, self.y = self.model.as_input(X), self.model.as_target(y)
        self.test = None
        self.library = f"xpmlp {xpmlp.__version__} on {self.model.backend.name}"

    def sync(self) -> None:
        self.model.backend.synchronize()

    def epoch(self) -> float:
        """One epoch; returns its mean training loss."""
        record = self.trainer.train_epoch(self.X, self.y)
        self.trainer.epoch += 1
        return record["train_loss"]

    def set_test(self, X, y) -> None:
        self.test = (self.model.as_input(X), self.model.as_target(y))

    def accuracy(self) -> float:
        import xpmlp

        return xpmlp.evaluate(self.model, *self.test)["accuracy"]

    def first_batch_loss(self) -> float:
        from xpmlp import to_numpy

        b = self.trainer.config.batch_size
        loss, _ = self.model.loss_and_grads(self.X[:b], self.y[:b])
        return float(to_numpy(loss))

    def initial_state(self) -> dict[str, np.ndarray]:
        return self.model.state_dict()


class Torch:
    name = "torch"

    def __init__(
        self,
        workload: Workload,
        X,
        y,
        *,
        device: str = "cpu",
        init: dict | None = None,
        seed: int = 0,
        compile: bool = False,
    ):
        import torch
        from torch import nn

        self.torch, self.device, self.seed = torch, torch.device(device), seed
        torch.manual_seed(seed)
        sizes = workload.layer_sizes
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.model = nn.Sequential(*layers).to(self.device)
        if init is not None:
            self._load_xpmlp_state(init)
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.forward = torch.compile(self.model) if compile else self.model
        self.name = "torch.compile" if compile else "torch"
        self.X = torch.from_numpy(np.ascontiguousarray(X)).to(self.device)
        self.y = torch.from_numpy(np.ascontiguousarray(y)).to(self.device)
        self.batch = workload.batch
        self.epochs_done = 0
        self.test = None
        self.library = f"torch {torch.__version__} ({self.device.type})"

    def _load_xpmlp_state(self, state: dict) -> None:
        torch = self.torch
        linears = [m for m in self.model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for i, layer in enumerate(linears):
                layer.weight.copy_(torch.from_numpy(state[f"layers.{i}.weight"].T.copy()))
                layer.bias.copy_(torch.from_numpy(state[f"layers.{i}.bias"]))

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def epoch(self) -> float:
        torch = self.torch
        from xpmlp.core.rng import batch_order

        n = self.X.shape[0]
        order = torch.from_numpy(batch_order(n, seed=self.seed, epoch=self.epochs_done))
        order = order.to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.model.train()
        for start in range(0, n, self.batch):
            index = order[start : start + self.batch]
            xb, yb = self.X[index], self.y[index]
            out = self.forward(xb)
            loss = self.loss_fn(out, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * index.shape[0]
            correct += (out.detach().argmax(dim=1) == yb).sum()
        self.epochs_done += 1
        return float(loss_sum) / n  # the one host sync, as in xpmlp

    def set_test(self, X, y) -> None:
        torch = self.torch
        self.test = (torch.from_numpy(X).to(self.device), torch.from_numpy(y).to(self.device))

    def accuracy(self) -> float:
        torch = self.torch
        X, y = self.test
        correct = 0
        self.model.eval()
        with torch.no_grad():
            for start in range(0, X.shape[0], EVAL_BATCH):
                out = self.model(X[start : start + EVAL_BATCH])
                correct += int((out.argmax(dim=1) == y[start : start + EVAL_BATCH]).sum())
        return correct / X.shape[0]

    def first_batch_loss(self) -> float:
        with self.torch.no_grad():
            out = self.model(self.X[: self.batch])
            return float(self.loss_fn(out, self.y[: self.batch]))


class Sklearn:
    name = "sklearn"

    def __init__(self, workload: Workload, X, y, *, seed: int = 0):
        import sklearn
        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(
            hidden_layer_sizes=workload.hidden,
            activation="relu",
            solver="adam",
            batch_size=workload.batch,
            max_iter=1,
            learning_rate_init=LR,
            alpha=0.0,
            shuffle=True,
            random_state=seed,
        )
        self.X, self.y = X, y
        self.classes = np.arange(N_CLASSES)
        self.test = None
        self.library = f"scikit-learn {sklearn.__version__}"

    def sync(self) -> None:
        pass

    def epoch(self) -> float:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.partial_fit(self.X, self.y, classes=self.classes)
        return float(self.clf.loss_)

    def set_test(self, X, y) -> None:
        self.test = (X, y)

    def accuracy(self) -> float:
        return float(self.clf.score(*self.test))

    @property
    def compute_dtype(self) -> str:
        return str(self.clf.coefs_[0].dtype) if hasattr(self.clf, "coefs_") else "unknown"


def make(name: str, workload: Workload, X, y, *, device: str, init: dict | None = None):
    """Build contestant ``name`` (xpmlp, torch, torch.compile, sklearn) on training set (X, y).

    ``device`` is ``cpu`` or ``gpu``; ``init`` is xpmlp's initial state, for torch to copy.
    """
    if name == "xpmlp":
        return Xpmlp(workload, X, y, device=device)
    if name in ("torch", "torch.compile"):
        torch_device = "cuda" if device == "gpu" else "cpu"
        return Torch(
            workload, X, y, device=torch_device, init=init, compile=name == "torch.compile"
        )
    if name == "sklearn":
        return Sklearn(workload, X, y)
    raise ValueError(f"unknown contestant {name!r}")
