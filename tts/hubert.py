"""HuBERT content features of the reference clip: the input of SoVITS `extract_latent`.

The official pipeline feeds the raw 16 kHz waveform to `transformers.HubertModel` (its feature
extractor is loaded but bypassed: no normalisation) and uses `last_hidden_state`, 50 frames/s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agent.errors import KoeError


class HubertEncoder:
    """A loaded HuBERT model; call it with a 16 kHz waveform to get [1, 768, frames]."""

    def __init__(
        self, model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ):
        from transformers import HubertModel

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise KoeError(
                f"HuBERT model not found in {model_dir} (needs config.json and the weights); "
                f"fetch it with `koe models download chinese-hubert-base`"
            )
        self.model = HubertModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.device = torch.device(device)
        self.dtype = dtype

    @torch.inference_mode()
    def __call__(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k [N] float in [-1, 1] -> features [1, hidden, floor((N - 400) / 320) + 1]."""
        x = wav16k.to(self.device, self.dtype).reshape(1, -1)
        return self.model(x).last_hidden_state.transpose(1, 2)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)
