"""koe's own HuBERT (tts.models.hubert) against transformers' HubertModel, the official pipeline's model.

transformers is the reference here only: the runtime path must not import it (last test). Random
small models are saved the ways real folders come: `save_pretrained` (safetensors, parametrized
weight-norm names), a legacy `pytorch_model.bin` (weight_g / weight_v, like the published
chinese-hubert-base) and a CTC checkpoint (keys under `hubert.`, plus the head).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from agent.errors import KoeError
from tts.hubert import HubertEncoder
from tts.models.hubert import HubertConfig, load_hubert, num_frames

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT.parent / "shared" / "fixtures" / "pipeline" / "models" / "chinese-hubert-tiny"
POS_CONV = "encoder.pos_conv_embed.conv."
LEGACY_NAMES = {  # how the published chinese-hubert-base names the weight-norm halves
    POS_CONV + "parametrizations.weight.original0": POS_CONV + "weight_g",
    POS_CONV + "parametrizations.weight.original1": POS_CONV + "weight_v",
}
# fp32 rounding only: the outputs are layer-normed (|x| up to ~5); the differences measured stay
# below 1.5e-6 single-threaded (about 5e-6 with many threads).
ATOL = 1e-5

SMALL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
)  # fmt: skip


def vowel(samples: int, f0: float = 130.0, seed: int = 0) -> torch.Tensor:
    """A vowel-like 16 kHz waveform: harmonics of a gliding f0 shaped by two formants, a syllable
    envelope and a little breath noise, peak about 0.5."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / 16000
    phase = 2 * math.pi * torch.cumsum(f0 * (1 + 0.1 * torch.sin(2 * math.pi * 2 * t)), 0) / 16000
    wave = torch.zeros_like(t)
    for k in range(1, 30):
        freq = k * f0
        gain = sum(math.exp(-(((freq - f) / 120) ** 2)) for f in (700, 1200)) + 0.05 / k
        wave += gain * torch.sin(k * phase)
    wave *= torch.sin(math.pi * t / t[-1]).clamp(min=0) ** 0.5
    wave += 0.01 * torch.randn(samples, generator=g, dtype=torch.float64)
    return (0.5 * wave / wave.abs().max()).float()


def reference_model(model_class=transformers.HubertModel, seed: int = 0, **overrides):
    """A random transformers model with every parameter perturbed (norms and biases not at 1 / 0)."""
    torch.manual_seed(seed)
    config = transformers.HubertConfig(**{**SMALL, **overrides})
    model = model_class(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def save_legacy(model, folder: Path) -> Path:
    """config.json + pytorch_model.bin with weight_g / weight_v keys, as the published folder has."""
    model.config.save_pretrained(folder)
    state = {LEGACY_NAMES.get(k, k): v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def transformers_features(model, wav: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(wav[None]).last_hidden_state.transpose(1, 2)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("pos_kernel", [16, 15], ids=["even-pos-kernel", "odd-pos-kernel"])
def test_matches_transformers_from_save_pretrained(tmp_path: Path, pos_kernel: int):
    model = reference_model(num_conv_pos_embeddings=pos_kernel)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors")
    assert POS_CONV + "parametrizations.weight.original1" in keys  # the current naming is exercised
    wav = vowel(7000)
    features = HubertEncoder(tmp_path)(wav)
    assert features.shape == (1, 64, (7000 - 400) // 320 + 1)
    assert max_diff(features, transformers_features(model, wav)) < ATOL


def test_matches_transformers_from_a_legacy_pytorch_model_bin(tmp_path: Path):
    model = reference_model()
    save_legacy(model, tmp_path)
    wav = vowel(9000, f0=210.0, seed=1)
    assert max_diff(HubertEncoder(tmp_path)(wav), transformers_features(model, wav)) < ATOL


def test_safetensors_is_preferred_over_pytorch_model_bin(tmp_path: Path):
    model = reference_model()
    save_legacy(reference_model(seed=1), tmp_path)  # another model's weights in the .bin
    model.save_pretrained(tmp_path)
    wav = vowel(5000)
    assert max_diff(HubertEncoder(tmp_path)(wav), transformers_features(model, wav)) < ATOL


def test_a_checkpoint_with_a_ctc_head_loads_its_hubert_part(tmp_path: Path):
    model = reference_model(transformers.HubertForCTC, vocab_size=32)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" in keys and all(k.startswith(("hubert.", "lm_head.")) for k in keys)
    wav = vowel(6000)
    assert max_diff(HubertEncoder(tmp_path)(wav), transformers_features(model.hubert, wav)) < ATOL


def test_layer_norm_feature_extractor_with_conv_bias(tmp_path: Path):
    model = reference_model(feat_extract_norm="layer", conv_bias=True)
    model.save_pretrained(tmp_path)
    assert "feature_extractor.conv_layers.6.layer_norm.weight" in load_file(tmp_path / "model.safetensors")
    wav = vowel(6000)
    assert max_diff(HubertEncoder(tmp_path)(wav), transformers_features(model, wav)) < ATOL


def test_frame_count_is_that_of_the_strided_convs(tmp_path: Path):
    model = reference_model()
    model.save_pretrained(tmp_path)
    encoder = HubertEncoder(tmp_path)
    for samples in (400, 719, 720, 1039, 16000, 16001):
        frames = (samples - 400) // 320 + 1
        assert num_frames(HubertConfig(), samples) == frames
        wav = vowel(samples)
        features = encoder(wav)
        assert features.shape[-1] == frames
        assert max_diff(features, transformers_features(model, wav)) < ATOL


def test_the_official_tiny_fixture_matches_transformers():
    if not (TINY / "model.safetensors").is_file():
        pytest.skip(f"{TINY} not found (the shared fixtures beside the repo)")
    wav = vowel(32000, f0=110.0)
    reference = transformers.HubertModel.from_pretrained(TINY, dtype=torch.float32).eval()
    features = HubertEncoder(TINY)(wav)
    assert features.shape == (1, 768, 99) and features.dtype == torch.float32
    assert max_diff(features, transformers_features(reference, wav)) < ATOL


def test_weights_in_the_requested_dtype_and_loading_draws_no_random_numbers(tmp_path: Path):
    model = reference_model()
    model.save_pretrained(tmp_path)
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    encoder = HubertEncoder(tmp_path, dtype=torch.float64)
    hubert = encoder.model
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded runs are not disturbed
    assert encoder.loaded and not hubert.training
    assert {p.dtype for p in hubert.parameters()} == {torch.float64}
    assert not any(p.requires_grad for p in hubert.parameters())
    features = encoder(vowel(5000))
    assert features.dtype == torch.float64
    assert max_diff(features, transformers_features(model.double(), vowel(5000).double())) < 1e-10
    encoder.release()
    assert not encoder.loaded


def test_half_precision_stays_close_to_float32(tmp_path: Path):
    reference_model().save_pretrained(tmp_path)
    wav = vowel(6000)
    full = HubertEncoder(tmp_path)(wav)
    try:
        half = HubertEncoder(tmp_path, dtype=torch.float16)(wav)
    except RuntimeError as exc:  # a torch build without CPU half kernels
        pytest.skip(f"no float16 on this CPU build: {exc}")
    assert half.dtype == torch.float16
    assert max_diff(half, full) < 0.01 * full.abs().max().item()  # measured 0.35 %


# ------------------------------------------------------------------------------------------ errors
def test_missing_folder_or_config(tmp_path: Path):
    with pytest.raises(
        KoeError, match=r"HuBERT model not found in .*koe models download chinese-hubert-base"
    ):
        HubertEncoder(tmp_path / "nowhere")
    with pytest.raises(KoeError, match=r"no config\.json.*koe models download chinese-hubert-base"):
        load_hubert(tmp_path)


def test_missing_weights_file(tmp_path: Path):
    reference_model().config.save_pretrained(tmp_path)
    encoder = HubertEncoder(tmp_path)  # the weights load on the first call
    with pytest.raises(KoeError) as error:
        encoder(vowel(4000))
    message = str(error.value)
    assert str(tmp_path) in message and "model.safetensors" in message and "pytorch_model.bin" in message
    assert "koe models download chinese-hubert-base" in message
    assert not encoder.loaded


@pytest.mark.parametrize(
    "key, value, supported",
    [
        ("do_stable_layer_norm", True, "false"),
        ("feat_extract_norm", "batch", '"group" or "layer"'),
        ("hidden_act", "relu", '"gelu"'),
        ("feat_extract_activation", "gelu_new", '"gelu"'),
        ("conv_pos_batch_norm", True, "false"),
    ],
)
def test_unsupported_config_values_are_named(tmp_path: Path, key: str, value, supported: str):
    reference_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(KoeError) as error:
        HubertEncoder(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "config.json") in message
    assert f"{key} = {json.dumps(value)} is not supported" in message and supported in message


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path: Path):
    reference_model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)

    missing = dict(state)
    del missing["encoder.layers.1.feed_forward.output_dense.bias"]
    save_file(missing, path)
    pattern = (
        r"model\.safetensors does not fit .*missing keys: encoder\.layers\.1\.feed_forward\.output_dense"
    )
    with pytest.raises(KoeError, match=pattern):
        load_hubert(tmp_path)

    save_file({**state, "encoder.layers.2.attention.q_proj.weight": torch.zeros(64, 64)}, path)
    with pytest.raises(KoeError, match=r"unexpected keys: encoder\.layers\.2\.attention\.q_proj\.weight"):
        load_hubert(tmp_path)

    save_file({**state, "feature_projection.projection.weight": torch.zeros(64, 16)}, path)
    pattern = r"projection\.weight has shape \(64, 16\), but its config\.json makes it \(64, 32\)"
    with pytest.raises(KoeError, match=pattern):
        load_hubert(tmp_path)


def test_a_legacy_file_without_one_weight_norm_half_is_named(tmp_path: Path):
    save_legacy(reference_model(), tmp_path)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    del state[POS_CONV + "weight_v"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        KoeError,
        match=r"pytorch_model\.bin does not fit .*missing keys: encoder\.pos_conv_embed\.conv\.weight_v",
    ):
        load_hubert(tmp_path)


def test_a_damaged_weights_file_is_a_koe_error(tmp_path: Path):
    reference_model().config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(KoeError, match=r"pytorch_model\.bin: cannot read"):
        load_hubert(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(KoeError, match=r"model\.safetensors: cannot read as safetensors"):
        load_hubert(tmp_path)


# ----------------------------------------------------------------------------------- no transformers
def test_the_runtime_path_does_not_import_transformers():
    if not (TINY / "model.safetensors").is_file():
        pytest.skip(f"{TINY} not found (the shared fixtures beside the repo)")
    script = f"""
import sys, torch
from tts.hubert import HubertEncoder
features = HubertEncoder({str(TINY)!r})(torch.sin(torch.arange(8000) / 8.0))
assert features.shape == (1, 768, 24), features.shape
print("transformers" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
