"""Handing freed memory back to the system, so resident memory falls when koe drops weights."""

from __future__ import annotations

import ctypes
import gc


def release_memory() -> None:
    """Collect garbage, then ask glibc to return freed heap pages (it keeps them otherwise: the
    serialized graphs and build-time copies of weights would stay resident)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
