"""Freed host memory kept for reuse on CPU (pretrain.hostmem), each case in a fresh process."""

import ctypes
import os
import subprocess
import sys

import pytest

# How many bytes glibc holds in mmapped blocks while a 64 MiB tensor lives, after keep_freed_memory
# or not: the first number is 64 MiB where every large block is a mapping of its own.
SCRIPT = """
import ctypes, sys, torch
from pretrain.hostmem import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2().hblkhd
x = torch.ones(16 * 2**20)  # 64 MiB
mapped = libc.mallinfo2().hblkhd - before
heap = libc.mallinfo2().arena
del x
print(kept, mapped, libc.mallinfo2().arena >= heap)
"""

glibc = pytest.mark.skipif(
    sys.platform != "linux" or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc 2.33+ only"
)


def _run(mode: str, **env) -> list[str]:
    mine = ("LD_PRELOAD", "GLIBC_TUNABLES")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in mine}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return out.split()


@glibc
def test_large_blocks_come_from_the_kept_heap():
    kept, mapped, heap_kept = _run("keep")
    assert kept == "True" and mapped == "0" and heap_kept == "True"  # freed, not given back
    _, mapped, _ = _run("default")
    assert int(mapped) >= 64 * 2**20  # glibc's default: a mapping of its own, unmapped on free


@glibc
@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_a_users_own_allocator_settings_are_left_alone(env):
    kept, mapped, _ = _run("keep", **env)
    assert kept == "False" and int(mapped) >= 64 * 2**20
