"""Full-size random-weight voice files for the benchmarks, written with koe's own exporters.

Random weights cost exactly the compute of trained ones, so speed measured on them holds for real
voices. Every file is in the official on-disk format, so the peer engines load the same files:

* GPT `.ckpt` (`save_gpt`, fp16 weights, `config` with the model and data sections);
* SoVITS v2 `.pth` (`save_sovits`, fp16, enc_q dropped, the official `s2.json` configuration);
* a chinese-roberta-wwm-ext-large folder (transformers `save_pretrained`, the published config, a
  tokenizer whose vocabulary holds the CJK characters one token each, as the published one does);
* a chinese-hubert-base folder (transformers `save_pretrained`, `pytorch_model.bin` with the weight-norm
  key names the published file carries, which both transformers and the official HuBERT loader read);
* a reference clip (espeak-ng speech, or any float waveform given).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 32000

# The official configs/s2.json (v2), with the sections every official reader looks up.
SOVITS_V2_CONFIG = {
    "train": {"segment_size": 20480},
    "data": {
        "max_wav_value": 32768.0, "sampling_rate": SAMPLE_RATE, "filter_length": 2048, "hop_length": 640,
        "win_length": 2048, "n_mel_channels": 128, "mel_fmin": 0.0, "mel_fmax": None, "add_blank": True,
        "n_speakers": 300, "cleaned_text": True,
    },
    "model": {
        "inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
        "kernel_size": 3, "p_dropout": 0.1, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_rates": [10, 8, 2, 2, 2],
        "upsample_initial_channel": 512, "upsample_kernel_sizes": [16, 16, 8, 2, 2], "n_layers_q": 3,
        "use_spectral_norm": False, "gin_channels": 512, "semantic_frame_rate": "25hz",
        "freeze_quantizer": True, "version": "v2",
    },
}  # fmt: skip

# transformers writes HuBERT's positional-conv weight norm as parametrizations; the published file
# (and the official loader) use the old names.
HUBERT_LEGACY_KEYS = {
    "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv_embed.conv.weight_g",
    "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv_embed.conv.weight_v",
}


def write_gpt(path: Path, max_sec: int = 54, seed: int = 0) -> Path:
    """A full-size v2 T2S model (77 M parameters) as an official GPT .ckpt."""
    from tts.models.t2s import T2SConfig, T2SModel
    from tts.weights.gpt import save_gpt

    torch.manual_seed(seed)
    save_gpt(path, T2SModel(T2SConfig(max_sec=max_sec)))
    return path


def write_sovits(path: Path, seed: int = 0) -> Path:
    """A full-size SoVITS v2 generator as an official .pth (weight norm unfolded, as trained files are)."""
    from tts.models.sovits import SoVITSConfig
    from tts.weights.sovits import build_sovits, save_sovits

    torch.manual_seed(seed)
    model = build_sovits(SoVITSConfig(version="v2"), weight_norm=True)
    save_sovits(path, model.state_dict(), SOVITS_V2_CONFIG, "1epoch_1iteration", "v2")
    return path


def write_hubert(folder: Path, seed: int = 0) -> Path:
    """A random chinese-hubert-base folder (config, preprocessor config, legacy-named pytorch_model.bin)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    model = HubertModel(HubertConfig())
    model.config.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(folder)
    state = {HUBERT_LEGACY_KEYS.get(k, k): v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    return folder


# The published chinese-roberta-wwm-ext-large config.json (the fields that set the compute).
BERT_LARGE_CONFIG = {
    "vocab_size": 21128, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
    "intermediate_size": 4096, "max_position_embeddings": 512, "type_vocab_size": 2,
}  # fmt: skip
CJK_FIRST, SPECIAL_TOKENS = 0x4E00, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_bert(folder: Path, seed: int = 0) -> Path:
    """A random full-size chinese-roberta-wwm-ext-large folder (326 M parameters, ~1.3 GB)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(CJK_FIRST + i) for i in range(BERT_LARGE_CONFIG["vocab_size"] - len(SPECIAL_TOKENS))]
    BertTokenizer(vocab={token: i for i, token in enumerate(SPECIAL_TOKENS + chars)}).save_pretrained(folder)
    torch.manual_seed(seed)
    BertModel(BertConfig(**BERT_LARGE_CONFIG), add_pooling_layer=False).save_pretrained(folder)
    return folder


def write_espeak_reference(path: Path, text: str) -> Path:
    """A spoken reference clip at 32 kHz (espeak-ng speaks it, sox resamples)."""
    raw = path.with_name(path.stem + "-22k.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), str(path)], check=True)
    return path


def write_reference(path: Path, audio: np.ndarray) -> Path:
    """A float waveform in [-1, 1] as a 16-bit 32 kHz WAV."""
    import soundfile as sf

    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return path
