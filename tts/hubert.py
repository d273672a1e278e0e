"""HuBERT content features of the reference clip: the input of SoVITS `extract_latent`.

The official pipeline feeds the raw 16 kHz waveform (no normalisation) to a HuBERT base model and
uses its last hidden state, 50 frames/s. koe runs its own implementation of the same architecture
(`tts.models.hubert`), loading the official chinese-hubert-base folder as it is; transformers is
not needed (nor imported) here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from agent.errors import KoeError
from tts.memory import release_memory
from tts.models.hubert import Hubert, HubertConfig, load_hubert

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
        self.config = HubertConfig.from_json(config)  # an unsupported architecture fails here, not later
        self.model_dir = model_dir
        self.device = torch.device(device)
        self.dtype = dtype
        self._model: Hubert | None = None

    @property
    def model(self) -> Hubert:
        if self._model is None:
            started = time.perf_counter()
            self._model = load_hubert(self.model_dir, self.device, self.dtype)  # draws no random numbers
            log.info("HuBERT loaded in %.1f s", time.perf_counter() - started)
        return self._model

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

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
        return self.model(x).transpose(1, 2)
