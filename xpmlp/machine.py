"""What this machine allows a process: its memory, under every limit that applies.

Imports from: nothing in xpmlp.
"""

from __future__ import annotations

import os


def host_memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# Memory limits of a container: cgroup v2, then v1 (whose "no limit" is a huge number).
CGROUP_MEMORY_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_limit() -> tuple[int, str] | None:
    """The memory this process may use, and which limit that is: the smallest of physical
    memory, the address-space limit ``RLIMIT_AS`` (``ulimit -v``) and the cgroup memory limit
    (a container's); None where none of them is known."""
    limits = [(host_memory_bytes(), "this machine's memory")]
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append((soft, "the address-space limit RLIMIT_AS (ulimit -v)"))
    except (ImportError, AttributeError, ValueError, OSError):
        pass  # no resource module (Windows), or no RLIMIT_AS
    for path in CGROUP_MEMORY_FILES:
        try:
            with open(path, "rb") as file:
                text = file.read(64).strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append((int(text), f"the cgroup memory limit ({path})"))
    known = [(size, name) for size, name in limits if size is not None and size > 0]
    return min(known, key=lambda limit: limit[0]) if known else None
