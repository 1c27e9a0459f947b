"""The network and its arithmetic, written once against the Array API.

``ops``: activations and losses, each forward beside its backward; ``flat``: the one buffer the
parameters (and their gradients) are views into; ``kernels``: fused kernels, their NumPy twins
and dispatch; ``kernel_source``: their CUDA source and its compilation; ``rng``: counter-based
randomness, the same bits on every backend; ``model``: the MLP's forward and backward pass;
``optim``: optimizers, schedules and clipping on the flat buffer; ``gradcheck``: float64 central
differences.

Imports from: xpmlp.errors, xpmlp.backend, xpmlp.data.
"""

from .gradcheck import gradcheck
from .model import MLP, LayerRecord
from .optim import Schedule, clip_grad_norm, make_optimizer

__all__ = ["MLP", "LayerRecord", "Schedule", "clip_grad_norm", "gradcheck", "make_optimizer"]
