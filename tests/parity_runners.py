"""Registry of parity runners: `kind -> run(manifest, arrays, folder) -> {array name: computed array}`.

Each model family keeps its runners in its own module (`parity_t2s.py`, `parity_sovits.py`,
`parity_v4.py`) and exposes them as a `RUNNERS` dict; this module merges them.
"""

from __future__ import annotations

import importlib

RUNNERS: dict = {}
for _module in ("parity_t2s", "parity_sovits", "parity_v4"):
    try:
        RUNNERS.update(importlib.import_module(_module).RUNNERS)
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise
