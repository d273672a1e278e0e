"""Parity runners for the SoVITS cases (`sovits_decode`, `sovits_extract_latent`) and `spectrogram`.

Each runner takes a fixture manifest, its arrays and its folder and returns every array the
manifest marks as compared, computed by our implementation from the case's inputs. Models are
loaded through `load_sovits`, exactly as user files are; sizes and versions come from the files.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tts.models.flow_onnx import OnnxFlow
from tts.models.generator_onnx import OnnxGenerator
from tts.models.text_encoder_onnx import OnnxTextEncoder
from tts.spectrogram import linear_spectrogram, mel_spectrogram, spec_to_log_mel
from tts.weights.sovits import load_sovits


@lru_cache(maxsize=8)
def _model(path: str, runtime: str = "torch"):
    """The model of a fixture; runtime "onnx" runs its text encoder and generator through their ONNX
    Runtime graphs."""
    model = load_sovits(path)
    if runtime == "onnx":
        model.dec.onnx = OnnxGenerator(model.dec, threads=1)
        model.enc_p.onnx = OnnxTextEncoder(model.enc_p, threads=1)
        model.flow.onnx = OnnxFlow(model.flow, threads=1)
    return model


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _suffixes(manifest: dict, prefix: str) -> list[str]:
    return [name[len(prefix) :] for name in manifest["arrays"] if name.startswith(prefix)]


def run_sovits_decode(manifest: dict, arrays: dict, folder: Path, runtime: str = "torch") -> dict:
    model = _model(str(Path(folder) / manifest["checkpoint"]), runtime)
    config = model.config
    out = {}
    for r in _suffixes(manifest, "refer_spec_"):
        wave = _tensor(arrays[f"ref_wav_{r}"])
        spec = linear_spectrogram(wave, config.filter_length, config.hop_length, config.win_length)
        out[f"refer_spec_{r}"] = spec.numpy()
    codes, text = _tensor(arrays["codes"]), _tensor(arrays["text"])
    for run in manifest["params"]["runs"]:
        refs = [_tensor(arrays[f"refer_spec_{i}"]) for i in run["references"]]
        sv = [_tensor(arrays[f"sv_emb_{i}"]) for i in run["references"]] if config.is_pro else None
        trace: dict = {}
        torch.manual_seed(run["seed"])
        audio = model.decode(codes, text, refs, run["noise_scale"], run["speed"], sv_emb=sv, trace=trace)
        out[run["prefix"] + "audio"] = audio.numpy()
        out.update({run["prefix"] + name: value.numpy() for name, value in trace.items()})
    return out


def run_sovits_extract_latent(manifest: dict, arrays: dict, folder: Path) -> dict:
    model = _model(str(Path(folder) / manifest["checkpoint"]))
    ssl = _tensor(arrays["ssl"])
    with torch.no_grad():
        ssl_proj_out = model.ssl_proj(ssl)
    return {"codes": model.extract_latent(ssl).numpy(), "ssl_proj_out": ssl_proj_out.numpy()}


def run_spectrogram(manifest: dict, arrays: dict, folder: Path) -> dict:
    params = manifest["params"]
    n_fft, sr, hop, win = params["spectrogram"]
    settings = next(v for k, v in params.items() if k.startswith("mel_settings"))
    out = {}
    for wave_name, operations in params["applied"].items():
        wave = _tensor(arrays[wave_name])
        spec = linear_spectrogram(wave, n_fft, hop, win)
        for operation in operations:
            if operation == "spec":
                out[f"spec_{wave_name}"] = spec.numpy()
                continue
            what, setting = operation.split(":")
            m_fft, n_mels, m_sr, m_hop, m_win, fmin, fmax = settings[setting]
            if what == "mel_from_spec":
                mel = spec_to_log_mel(spec, m_sr, m_fft, n_mels, fmin, fmax)
            elif what == "mel":
                mel = mel_spectrogram(wave, m_fft, n_mels, m_sr, m_hop, m_win, fmin, fmax)
            else:
                raise ValueError(f"unknown spectrogram operation {operation!r}")
            out[f"{what}_{setting}_{wave_name}"] = mel.numpy()
    return out


RUNNERS = {
    "sovits_decode": run_sovits_decode,
    "sovits_extract_latent": run_sovits_extract_latent,
    "spectrogram": run_spectrogram,
}
