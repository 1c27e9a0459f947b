"""What is benchmarked: the network, the batch, and the matrix products one training step costs.

A workload is one MLP (784 inputs, ReLU hidden layers, 10 softmax outputs, float32) trained with
Adam (lr 1e-3) at one batch size. Every framework in a run trains the same workloads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

N_INPUTS, N_CLASSES = 784, 10
LR = 1e-3

FLOP_FORMULA = (
    "per sample, with layer sizes d_0..d_L and S = sum_i d_i*d_(i+1): forward 2*S (one GEMM per "
    "layer); backward 2*S for the weight gradients plus 2*(S - d_0*d_1) for the input gradients "
    "(the first layer's input gradient is never computed); total 6*S - 2*d_0*d_1. Bias adds, "
    "activations, softmax and the optimizer are not counted."
)


@dataclass(frozen=True)
class Workload:
    """One network and batch size.

    Attributes
    ----------
    batch : int
    hidden : tuple of int
        Hidden-layer widths; the network is ``(784, *hidden, 10)``.
    """

    batch: int
    hidden: tuple[int, ...]

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (N_INPUTS, *self.hidden, N_CLASSES)

    @property
    def name(self) -> str:
        return f"b{self.batch}-h{'x'.join(map(str, self.hidden))}"

    @property
    def label(self) -> str:
        return f"{'-'.join(map(str, self.layer_sizes))} @ {self.batch}"

    def flops_per_sample(self) -> int:
        """Floating-point operations of one sample's GEMMs, fwd + bwd (see `FLOP_FORMULA`)."""
        sizes = self.layer_sizes
        s = sum(a * b for a, b in itertools.pairwise(sizes))
        return 6 * s - 2 * sizes[0] * sizes[1]

    def gemm_shapes(self) -> list[tuple[str, int, int, int]]:
        """The step's matrix products as (role, m, k, n): an (m, k) @ (k, n) product each."""
        sizes, b = self.layer_sizes, self.batch
        shapes = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            shapes.append((f"fwd{i}: a@W", b, fan_in, fan_out))
        for i in reversed(range(len(sizes) - 1)):
            fan_in, fan_out = sizes[i], sizes[i + 1]
            shapes.append((f"bwd{i}: a.T@delta", fan_in, b, fan_out))
            if i > 0:
                shapes.append((f"bwd{i}: delta@W.T", b, fan_out, fan_in))
        return shapes

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "batch": self.batch,
            "hidden": list(self.hidden),
            "layer_sizes": list(self.layer_sizes),
            "flops_per_sample": self.flops_per_sample(),
            "gemm_shapes_mkn": [list(s) for s in self.gemm_shapes()],
        }


CPU_WORKLOADS = tuple(
    Workload(batch, hidden)
    for hidden in ((300, 300), (1024, 1024, 1024))
    for batch in (32, 128, 1024)
)
GPU_WORKLOADS = (*CPU_WORKLOADS, Workload(8192, (4096, 4096)))
QUICK_WORKLOADS = (Workload(16, (32,)), Workload(64, (48, 48)))

HEADLINE = Workload(128, (300, 300))  # the targets are stated for this one
LARGE = Workload(128, (1024, 1024, 1024))  # and the CPU's second target for this one
QUICK_HEADLINE = QUICK_WORKLOADS[0]
