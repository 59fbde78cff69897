"""cap_heap_retention: blocks above the fixed threshold are memory-mapped (returned to the system when freed)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt")

# Runs in a child process: mallopt changes the whole process. mallinfo2().hblkhd = bytes in mapped blocks.
_CHILD = textwrap.dedent("""
    import ctypes, ctypes.util
    from tsvmerge.utils.allocator import cap_heap_retention

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def mapped_after_malloc(size):
        # glibc raises its dynamic threshold after a mapped block is freed; a fixed one does not move.
        block = libc.malloc(size); libc.free(block)
        block = libc.malloc(size); mapped = libc.mallinfo2().hblkhd; libc.free(block)
        return mapped

    import sys
    capped = sys.argv[1] == "capped" and cap_heap_retention()
    print(capped, mapped_after_malloc(6 * 2**20) >= 6 * 2**20, mapped_after_malloc(2**20) >= 2**20)
""")


def _child(mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_blocks_above_the_threshold_stay_mapped_after_the_cap() -> None:
    # glibc's default: the freed 6 MiB block raises the threshold, and the next one comes from the heap.
    assert _child("default") == ["False", "False", "False"]
    assert _child("capped") == ["True", "True", "False"]
