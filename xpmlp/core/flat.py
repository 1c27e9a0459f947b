"""One flat buffer for many named tensors: parameters, their gradients, optimizer moments.

The optimizer then updates every parameter in one pass (one kernel on a GPU), and a distributed
all-reduce sends the whole gradient in one call. Each tensor starts on a multiple of ``ALIGN``
elements (128 bytes in float32) so GPU loads stay coalesced; the gaps hold zeros, which every
optimizer leaves at zero and every norm ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError

ALIGN = 32


@dataclass(frozen=True)
class Layout:
    """Where each named tensor lives in a flat buffer.

    Attributes
    ----------
    shapes : dict
        Name -> shape, in the order the tensors are laid out.
    offsets : dict
        Name -> index of the tensor's first element.
    size : int
        Length of the buffer, gaps included.
    """

    shapes: dict
    offsets: dict
    size: int

    @classmethod
    def of(cls, shapes: dict) -> Layout:
        """Lay out ``shapes`` (name -> shape) one after another, in the given order."""
        offsets, end = {}, 0
        for name, shape in shapes.items():
            offsets[name] = end
            end += -(-_count(shape) // ALIGN) * ALIGN
        return cls({name: tuple(shape) for name, shape in shapes.items()}, offsets, end)

    def span(self, name: str) -> tuple[int, int]:
        start = self.offsets[name]
        return start, start + _count(self.shapes[name])

    def views(self, xp, flat) -> dict:
        """Name -> the tensor as a view into ``flat`` (writes to a view write the buffer)."""
        return {
            name: xp.reshape(flat[slice(*self.span(name))], shape)
            for name, shape in self.shapes.items()
        }

    def concat(self, xp, arrays: dict):
        """A new flat buffer holding ``arrays`` (name -> array on one device): the portable way
        to fill a buffer where arrays cannot be written in place."""
        like = next(iter(arrays.values()))
        parts, end = [], 0
        for name in self.shapes:
            start, stop = self.span(name)
            if start > end:
                parts.append(xp.zeros(start - end, dtype=like.dtype, device=like.device))
            parts.append(xp.reshape(arrays[name], (-1,)))
            end = stop
        if self.size > end:
            parts.append(xp.zeros(self.size - end, dtype=like.dtype, device=like.device))
        return xp.concat(parts)

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Name -> a copy of each tensor, from a host buffer."""
        return {name: view.copy() for name, view in self.views(np, flat).items()}

    def join(self, arrays: dict, dtype, *, what: str = "parameter") -> np.ndarray:
        """A host buffer from name -> host array; names and shapes must match the layout."""
        missing = [name for name in self.shapes if name not in arrays]
        unexpected = [name for name in arrays if name not in self.shapes]
        if missing or unexpected:
            raise CheckpointError(
                f"{what} names do not match the model: missing {missing}, unexpected {unexpected}"
            )
        flat = np.zeros(self.size, dtype=dtype)
        for name, view in self.views(np, flat).items():
            value = np.asarray(arrays[name])
            if value.shape != view.shape:
                raise CheckpointError(
                    f"{what} {name} has shape {value.shape} in the checkpoint but "
                    f"{view.shape} in the model"
                )
            view[...] = value
        return flat


def _count(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))
