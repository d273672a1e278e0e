"""Registry of parity runners: `kind -> run(manifest, arrays, folder) -> {array name: computed array}`.

Each model family keeps its runners in its own module and exposes them as a `RUNNERS` dict; this
module merges them, so the harness in test_parity_models.py dispatches on the manifest's `kind`.
"""

from __future__ import annotations

import parity_sovits
import parity_t2s
import parity_v4

RUNNERS: dict = {**parity_t2s.RUNNERS, **parity_sovits.RUNNERS, **parity_v4.RUNNERS}
