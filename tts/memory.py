"""Handing freed memory back to the system, so resident memory falls when koe drops weights."""

from __future__ import annotations

import ctypes
import gc


def release_memory() -> None:
    """Collect garbage, then hand freed heap pages back (the serialized graphs and build-time copies
    of weights would stay resident otherwise)."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Ask glibc to return freed heap pages to the system (it keeps them otherwise: after a long
    sentence the SoVITS activations, ~100 MB, would stay resident). A few tens of ms."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
