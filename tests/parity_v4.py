"""Parity runners for the v4 flow-matching sampler (`cfm_inference`) and the v2Pro speaker network
(`sv_embedding`).

Each runner takes a fixture manifest, its arrays and its folder and returns every array the manifest
marks as compared, computed by our implementation from the case's inputs. Checkpoints are loaded
through the same loaders as user files; sizes come from the files or the manifest's `config`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tts.fbank import FbankConfig, fbank
from tts.models.cfm import load_cfm_component
from tts.models.sv import SVConfig, load_sv_model, pooled_features


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _suffixes(manifest: dict, prefix: str) -> list[str]:
    return [name[len(prefix) :] for name in manifest["arrays"] if name.startswith(prefix)]


@lru_cache(maxsize=2)
def _cfm(path: str):
    return load_cfm_component(path)


def run_cfm_inference(manifest: dict, arrays: dict, folder: Path) -> dict:
    cfm = _cfm(str(Path(folder) / manifest["checkpoint"]))
    mu, lengths, prompt = _tensor(arrays["mu"]), _tensor(arrays["x_lens"]), _tensor(arrays["prompt"])
    out = {}
    for run in manifest["params"]["runs"]:
        if run.get("inference_cfg_rate", 0):
            raise NotImplementedError(f"{manifest['case']}: classifier-free guidance is not implemented")
        p = run["prefix"]
        seed = int(arrays[p + "seed"]) if p + "seed" in arrays else run["seed"]
        trace: dict = {}
        torch.manual_seed(seed)
        mel = cfm.inference(mu, lengths, prompt, run["n_timesteps"], run["temperature"], trace=trace)
        out[p + "out"] = mel.numpy()
        out[p + "noise"] = trace["noise"].numpy()
        out[p + "v_pred_per_call"] = torch.stack(trace["velocities"]).numpy()  # [steps, B, T, mel]
    return out


@lru_cache(maxsize=2)
def _sv(path: str, cfg: SVConfig):
    return load_sv_model(path, cfg)


def run_sv_embedding(manifest: dict, arrays: dict, folder: Path) -> dict:
    cfg = SVConfig.from_constructor_args(manifest["config"]["constructor_args"])
    model = _sv(str(Path(folder) / manifest["checkpoint"]), cfg)
    fbank_cfg = FbankConfig.from_kaldi_options(manifest["params"].get("fbank_effective", {}))
    out = {}
    for i in _suffixes(manifest, "wave_"):
        waves = _tensor(arrays[f"wave_{i}"])  # [B, N]
        out[f"fbank_{i}"] = torch.stack([fbank(w, fbank_cfg) for w in waves]).numpy()
        with torch.inference_mode():
            fmap = model.feature_map(_tensor(arrays[f"fbank_{i}"]))  # the stored fbank, as the fixture did
        out[f"pool_in_{i}"] = fmap.numpy()
        out[f"sv_emb_{i}"] = pooled_features(fmap).numpy()
    return out


RUNNERS = {"cfm_inference": run_cfm_inference, "sv_embedding": run_sv_embedding}
