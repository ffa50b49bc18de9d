"""Freed host memory kept for the next step, for training on CPU.

glibc's malloc serves every request over its mmap threshold (which rises with the blocks freed,
up to 32 MiB) with a mapping of its own and unmaps it on free. A training step frees and asks
again for the same large blocks every step: autograd's gradients, the activations, and
DeepSpeed's gradient buckets and partition, which ZeRO-1/2 release after every step (on a GPU
the caching allocator makes that free). On CPU each such block comes back as new pages the
kernel faults in and zeroes, 4 KiB at a time: at GPT-2 small's size that made DeepSpeed's ZeRO-1
step 22-44% slower than the same step in plain torch, and within 10% of it with this
(docs/benchmarks.md). torch's CPU tuning guide answers it with jemalloc or tcmalloc preloaded;
glibc can do the same itself: serve large blocks from the heap too and never trim it, so the
process keeps its high-water mark and reuses it, as a GPU's caching allocator does.

A user who chose an allocator or malloc settings (LD_PRELOAD, MALLOC_*, GLIBC_TUNABLES) keeps
them: nothing is changed then.
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_TRIM_AT = 2**31 - 1  # bytes of free heap top before glibc gives it back: the most mallopt takes


def user_allocator_settings() -> list[str]:
    """The environment variables by which a user chose the allocator or its settings."""
    names = [k for k in os.environ if k.startswith("MALLOC_")]
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        names.append("GLIBC_TUNABLES")
    if os.environ.get("LD_PRELOAD"):
        names.append("LD_PRELOAD")
    return names


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in this process for reuse; True if it now does. False where the
    C library is not glibc or the user chose allocator settings of their own."""
    if platform.system() != "Linux" or user_allocator_settings():
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no mallopt of these parameters
        return False
    # Large blocks from the heap, and a heap never trimmed: either alone still faults pages in.
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_AT)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
