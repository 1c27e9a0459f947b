"""The backprop doctor: a user's own hand-written network, checked against xpmlp's, the bug named.

:func:`check_gradients` compares the user's ``grads(weights, biases, X, Y)`` with xpmlp's float64
backward pass on the same weights and names the bug; :func:`check_forward` does the same for
``forward(weights, biases, X)``; :func:`check_batches` finds X and y shuffled apart;
:func:`check_file` runs all that apply to a user's file (``xpmlp doctor FILE``), in a child process
(:mod:`xpmlp.doctor.child`) with a timeout.

Imports from: xpmlp.errors, xpmlp.backend, xpmlp.core.
"""

from .batches import check_batches
from .forward import check_forward
from .gradients import check_gradients
from .report import Finding, Report
from .userfile import check_file

__all__ = ["Finding", "Report", "check_batches", "check_file", "check_forward", "check_gradients"]
