"""HuBERT content features of the reference clip: the input of SoVITS `extract_latent`.

The official pipeline feeds the raw 16 kHz waveform to `transformers.HubertModel` (its feature
extractor is loaded but bypassed: no normalisation) and uses `last_hidden_state`, 50 frames/s.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from agent.errors import KoeError
from tts.memory import release_memory

log = logging.getLogger(__name__)


class HubertEncoder:
    """HuBERT from a model folder; call it with a 16 kHz waveform to get [1, 768, frames].

    The weights load on the first call: a voice whose reference features are cached never needs them
    (about 380 MB less resident memory). `release` drops them again once a voice's clips are prepared;
    a later new clip loads them anew.
    """

    def __init__(
        self, model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ):
        model_dir = Path(model_dir)
        config = model_dir / "config.json"
        if not config.is_file():
            raise KoeError(
                f"HuBERT model not found in {model_dir} (needs config.json and the weights); "
                f"fetch it with `koe models download chinese-hubert-base`"
            )
        try:
            self.num_layers = int(json.loads(config.read_text())["num_hidden_layers"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KoeError(f"{config}: not a HuBERT config ({exc})") from None
        self.model_dir = model_dir
        self.device = torch.device(device)
        self.dtype = dtype
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from transformers import HubertModel

            started = time.perf_counter()
            with torch.random.fork_rng(devices=[]):  # loading draws init noise: keep it from seeded runs
                model = HubertModel.from_pretrained(self.model_dir, dtype=self.dtype)
            self._model = model.to(self.device).eval()
            log.info("HuBERT loaded in %.1f s", time.perf_counter() - started)
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def release(self) -> None:
        """Drop the weights (they load again on the next call) and hand the memory back to the system."""
        if self._model is None:
            return
        self._model = None
        release_memory()
        log.info("HuBERT released (it loads again for a new reference clip)")

    @torch.inference_mode()
    def __call__(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k [N] float in [-1, 1] -> features [1, hidden, floor((N - 400) / 320) + 1]."""
        x = wav16k.to(self.device, self.dtype).reshape(1, -1)
        return self.model(x).last_hidden_state.transpose(1, 2)
