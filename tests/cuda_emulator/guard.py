"""Guard pages: a launch whose every buffer is a copy between two inaccessible pages, run in a
child process (runtime.cpp: xemu_launch_forked), so that an access outside a buffer is a named
error, not a crash of the caller."""

from __future__ import annotations

import ctypes
import mmap
import signal

from . import DeviceArray, EmulatorError, _cell

PAGE = mmap.PAGESIZE


def _regions(arrays) -> list[tuple[int, int]]:
    """The host byte ranges to copy: overlapping arrays (one array passed twice, views of one
    buffer) share one copy, so that a write through one pointer is seen through the other."""
    spans = sorted({(a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays})
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _home(regions: dict, start: int, end: int):
    """The copied region an array's bytes live in (its own, for an empty array)."""
    if (start, end) in regions:
        return (start, end), regions[(start, end)]
    for (a, b), data in regions.items():
        if a <= start and end <= b and a < b:
            return (a, b), data
    raise AssertionError("every array has a region")


def run_guarded(function, grid, block, values) -> None:
    lib, at_end = function.module.lib, int(function.module.guard == "end")
    arrays = [v.array for v in values if isinstance(v, DeviceArray)]
    regions: dict[tuple[int, int], int] = {}
    try:
        for start, end in _regions(arrays):
            data = lib.xemu_map(end - start, at_end)
            if not data:
                raise MemoryError("guarded copy of a kernel argument")
            regions[(start, end)] = data
            ctypes.memmove(data, start, end - start)
        cells, where = [], []
        for value in values:
            if isinstance(value, DeviceArray):
                begin = value.array.ctypes.data
                (region_start, region_end), data = _home(regions, begin, begin + value.array.nbytes)
                address = data + begin - region_start
                where.append((value.array, address, data, region_end - region_start))
            else:
                address = None
                where.append(None)
            cells.append(_cell(value, address))
        outcome = function._launch(grid, block, [ctypes.addressof(c) for c in cells], forked=True)
        if outcome:
            raise EmulatorError(f"{function.name}: {_describe(function, where, *outcome)}")
        for (start, end), data in regions.items():
            ctypes.memmove(start, data, end - start)
    finally:
        for (start, end), data in regions.items():
            lib.xemu_unmap(data, end - start, at_end)


def _describe(function, where, fault: int, number: int) -> str:
    if number not in (signal.SIGSEGV, signal.SIGBUS):
        return f"the kernel died of signal {number}"
    for index, place in enumerate(where):
        if place is None:
            continue
        array, address, data, length = place
        first_page = data - data % PAGE
        end_page = -(-(data + length) // PAGE) * PAGE
        if first_page - PAGE <= fault < first_page or end_page <= fault < end_page + PAGE:
            element = (fault - address) // array.itemsize
            side = "before its start" if element < 0 else "past its end"
            return (f"an access outside argument {index} ({function.params[index]}, "
                    f"{array.size} elements) at element {element}, {side} (a guard page)")  # fmt: skip
    return f"a fault at address {fault:#x}, outside every buffer (signal {number})"
