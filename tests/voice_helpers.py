"""Shared helpers for the voice-building tests and benchmark: tiny random "pretrained" models written
in the official file formats, and small espeak-ng datasets in the `.list` format.

Nothing here reaches a model hub. HuBERT and BERT are the tiny `transformers` folders of the shared
pipeline fixtures (hidden sizes 768 / 1024 as the real ones); GPT, SoVITS and the speaker model are
built here with seeded random weights and written exactly as the official pretrained files are.
"""

from __future__ import annotations

import functools
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from asr_helpers import require_espeak, speak

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT.parent / "shared" / "fixtures" / "pipeline" / "models"
TINY_HUBERT = FIXTURE_MODELS / "chinese-hubert-tiny"
TINY_BERT = FIXTURE_MODELS / "chinese-bert-tiny"  # knows only the characters of ZH_SENTENCE (and ASCII)
ZH_SENTENCE = "春天来了，花园里的花都开了。"

# English sentences, each in another espeak-ng voice: about 20 s of speech in all.
SENTENCES = [
    ("The weather is nice today and the sun is shining.", "en-us", 150),
    ("Please open the window before you leave the room.", "en", 145),
    ("My favorite color is green and I like to read books.", "en-gb-x-rp", 150),
    ("We will meet at the train station tomorrow morning.", "en-us", 140),
    ("Can you tell me how to get to the library?", "en-029", 150),
    ("The little bird sang a song in the old tree.", "en-us", 145),
]

# Small sizes the official code leaves free (phoneme and code vocabularies stay official).
TINY_GPT = {"dim": 32, "num_heads": 2, "num_layers": 2}
TINY_SV = {"base_width": 4, "scale": 2, "expansion": 4, "m_channels": 64, "num_blocks": (1, 1, 1, 1)}


def speak_32k(text: str, voice: str = "en-us", speed: int = 150) -> np.ndarray:
    """espeak-ng speech as float32 32 kHz mono (the SoVITS training rate)."""
    return speak(text, voice, speed, rate=32000)


@dataclass
class Dataset:
    list_path: Path
    clips: list[Path]
    texts: list[str]


def make_dataset(
    folder: Path, sentences=SENTENCES, speaker: str = "aria", with_chinese: bool = False
) -> Dataset:
    """One 32 kHz PCM16 clip per sentence in `folder/clips/` and `folder/clips.list` (EN lines; one ZH
    line read by an English voice when `with_chinese`, to exercise the BERT step)."""
    require_espeak()
    clips_dir = folder / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    lines, clips, texts = [], [], []
    items = [(text, voice, speed, "EN") for text, voice, speed in sentences]
    if with_chinese:
        items.append((ZH_SENTENCE, "cmn", 150, "ZH"))
    for i, (text, voice, speed, language) in enumerate(items):
        path = clips_dir / f"clip_{i:02d}.wav"
        soundfile.write(path, speak_32k(text, voice, speed) * 0.8, 32000, subtype="PCM_16")
        lines.append(f"{path}|{speaker}|{language}|{text}")
        clips.append(path)
        texts.append(text)
    list_path = folder / "clips.list"
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Dataset(list_path, clips, texts)


# --- tiny pretrained models in the official formats ------------------------------------------------


def write_tiny_gpt(path: Path, seed: int = 0, **sizes) -> Path:
    """A pretrained-style GPT `.ckpt` (official layout: `weight` with `model.` keys, config, info)."""
    from tts.models.t2s import T2SConfig, T2SModel
    from tts.weights.gpt import save_gpt

    torch.manual_seed(seed)
    model = T2SModel(T2SConfig(**{**TINY_GPT, **sizes}))
    save_gpt(path, model, info="pretrained")
    return path


def tiny_sovits_config(version: str = "v2") -> dict:
    """A small official-style SoVITS run config (sections train, data, model)."""
    model = {
        "inter_channels": 16, "hidden_channels": 32, "filter_channels": 48, "n_heads": 2, "n_layers": 2,
        "kernel_size": 3, "p_dropout": 0.0, "resblock": "1", "resblock_kernel_sizes": [3, 5],
        "resblock_dilation_sizes": [[1, 3], [1, 3]], "upsample_rates": [10, 8, 8],
        "upsample_initial_channel": 32, "upsample_kernel_sizes": [20, 16, 16], "n_layers_q": 3,
        "use_spectral_norm": False, "gin_channels": 512, "semantic_frame_rate": "25hz",
        "freeze_quantizer": True, "version": version,
    }  # fmt: skip
    if version in ("v2Pro", "v2ProPlus"):
        model["gin_channels"] = 24
    data = {
        "sampling_rate": 32000,
        "filter_length": 2048,
        "hop_length": 640,
        "win_length": 2048,
        "n_speakers": 300,
    }
    return {
        "train": {"segment_size": 20480},
        "data": data,
        "model": model,
        "version": version,
        "pretrain": None,
    }


def write_tiny_sovits(path: Path, version: str = "v2", seed: int = 0) -> Path:
    """A pretrained-style SoVITS generator `.pth`: fp32 weights *with* `enc_q`, weight-norm pairs, no
    version header (like s2G2333k.pth / s2Gv2Pro.pth)."""
    from tts.models.sovits import SynthesizerTrn
    from tts.weights.sovits import config_from_file

    config = tiny_sovits_config(version)
    torch.manual_seed(seed)
    model = SynthesizerTrn(config_from_file(config, version), weight_norm=True, posterior=True)
    payload = OrderedDict(weight=OrderedDict(model.state_dict()), config=config, info="pretrained")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def tiny_sv_config():
    from tts.models.sv import SVConfig

    return SVConfig(**TINY_SV)


def write_tiny_sv(path: Path, seed: int = 0) -> Path:
    """A plain-state-dict ERes2NetV2 (official file layout) of reduced width with the official
    20480-d output; load it with `load_sv_model(path, tiny_sv_config())`."""
    from tts.models.sv import ERes2NetV2

    torch.manual_seed(seed)
    model = ERes2NetV2(tiny_sv_config())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@dataclass
class Pretrained:
    gpt: Path
    sovits: Path
    hubert: Path
    bert: Path
    sv: Path | None


def write_pretrained(folder: Path, version: str = "v2") -> Pretrained:
    """Every model dataset preparation and training need, for `version`, under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return Pretrained(
        gpt=write_tiny_gpt(folder / "s1.ckpt"),
        sovits=write_tiny_sovits(folder / f"s2G_{version}.pth", version),
        hubert=TINY_HUBERT,
        bert=TINY_BERT,
        sv=write_tiny_sv(folder / "sv.ckpt") if version in ("v2Pro", "v2ProPlus") else None,
    )


@dataclass
class Prepared:
    """A dataset with its experiment folder after `koe voice prepare` (shared: copy before changing)."""

    root: Path
    dataset: Dataset
    pretrained: Pretrained
    exp_dir: Path
    version: str


@functools.cache
def prepared_experiment(version: str = "v2", with_chinese: bool = True) -> Prepared:
    """The espeak-ng dataset prepared once per test process (about 20 s on two cores)."""
    import tempfile

    from training.dataset import read_list
    from training.prepare import PrepareModels, prepare_dataset

    root = Path(tempfile.mkdtemp(prefix=f"koe-voice-{version}-"))
    dataset = make_dataset(root, with_chinese=with_chinese)
    pretrained = write_pretrained(root / "pretrained", version)
    models = PrepareModels(
        pretrained.sovits,
        pretrained.hubert,
        pretrained.bert,
        pretrained.sv,
        tiny_sv_config() if pretrained.sv else None,
    )
    entries = [entry for _, entry in read_list(dataset.list_path)[0]]
    exp_dir = root / "runs" / "aria"
    prepare_dataset(entries, dataset.list_path, exp_dir, version, models)
    return Prepared(root, dataset, pretrained, exp_dir, version)


def copy_experiment(prepared: Prepared, dest: Path) -> Path:
    """A private copy of a prepared experiment folder (tests that write into it)."""
    target = dest / "runs" / prepared.exp_dir.name
    shutil.copytree(prepared.exp_dir, target)
    return target
