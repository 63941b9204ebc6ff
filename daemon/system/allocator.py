"""The C allocator's policy for a daemon that runs for months: large blocks go back to the system when freed.

glibc's malloc raises its mmap threshold to the size of any large block freed (up to 32 MiB on 64-bit),
after which blocks that size come from the heap, and a freed one stays in the process while anything above
it is in use. Full frames, night stacks (float sums and the frames of a sigma clip) and clips are such
blocks: measured on a PC (bench/memory.py --variants), the shipped config ran 8 MiB larger with glibc's own
threshold, and one background `stack 16` left it another 9 to 21 MiB larger for good. A fixed threshold
turns that adjustment off: a block of `THRESHOLD` or more is mapped on its own and unmapped when freed,
smaller ones (ring-sized scratch, JPEGs) are reused from the heap. The price is the page faults of each
fresh full frame (about 1 ms a 1024x768 frame on a PC).

`MALLOC_MMAP_THRESHOLD_` in the environment (glibc's own name for it) wins, so it can be compared.
"""

from __future__ import annotations

import ctypes
import os

#: Blocks of this size and more are mapped and returned when freed: every full frame, none of the ring-sized ones.
THRESHOLD = 1 << 20
ENV = "MALLOC_MMAP_THRESHOLD_"
_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>


def fix_mmap_threshold(threshold: int = THRESHOLD) -> str:
    """Set glibc's mmap threshold once at start; returns what was done, for the log."""
    if os.environ.get(ENV):
        return f"allocator: {ENV}={os.environ[ENV]} from the environment"
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this interpreter runs on
    except (OSError, AttributeError):
        return "allocator: no mallopt in this C library; left as it is"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, int(threshold)) != 1:
        return "allocator: this C library refused a fixed mmap threshold; left as it is"
    return f"allocator: blocks of {threshold // 1024} KiB and more go back to the system when freed"
