"""SoVITS model structure, weight-file round trips and spectrogram helpers.

Parity against the official numbers lives in test_parity_models.py (runners in parity_sovits.py);
this file checks the parts the fixtures do not: full-size key layouts of every family, writing files,
weight-norm folding, and the mel filterbank.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tts.models.sovits import SoVITSConfig, SynthesizerTrn, SynthesizerTrnV3
from tts.spectrogram import linear_spectrogram, mel_filterbank
from tts.weights import detect_weights, read_checkpoint
from tts.weights.sovits import (
    build_sovits,
    config_from_file,
    fold_weight_norm,
    load_sovits,
    read_sovits,
    save_sovits,
)
from voice_helpers import tiny_sovits_config

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "spec"
MANIFESTS = SPEC / "manifests"
FIXTURES = ROOT.parent / "shared" / "fixtures" / "parity"
needs_spec = pytest.mark.skipif(not MANIFESTS.is_dir(), reason="shared/spec not found beside the repo")
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures not found beside the repo")


def _manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def _config(manifest: dict) -> SoVITSConfig:
    return config_from_file(manifest["config"], manifest["config"]["model"]["version"])


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@needs_spec
@pytest.mark.parametrize("name", ["sovits_v1", "sovits_v2", "sovits_v2pro", "sovits_v2proplus"])
def test_full_size_model_matches_official_manifest(name):
    manifest = _manifest(name)
    with torch.device("meta"):
        model = SynthesizerTrn(_config(manifest), weight_norm=True, posterior=True)
    expected = {k: v["shape"] for k, v in manifest["state_dict"].items()}
    got = _shapes(model)
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert list(got.items()) == list(expected.items())  # same shapes, same (registration) order
    inference_params = sum(v.numel() for k, v in model.named_parameters() if not k.startswith("enc_q."))
    assert inference_params == manifest["params_inference"]


@needs_spec
def test_v4_model_matches_official_manifest():
    manifest = _manifest("sovits_v4")
    with torch.device("meta"):
        model = build_sovits(
            _config(manifest), weight_norm=True
        )  # front end here, cfm.* from tts/models/cfm.py
    expected = {k: v["shape"] for k, v in manifest["state_dict"].items()}
    assert list(_shapes(model).items()) == list(expected.items())


@needs_spec
@pytest.mark.parametrize("version", ["v2", "v2Pro", "v2ProPlus"])
def test_export_layout_matches_official_exporter(version):
    export = json.loads((SPEC / "gpt-sovits-export-keys.json").read_text())[f"sovits_{version}"]
    manifest = _manifest(f"sovits_{version.lower()}")
    with torch.device("meta"):
        model = SynthesizerTrn(_config(manifest), weight_norm=True)
    assert list(_shapes(model).items()) == list(export.items())  # the exporter's keys, shapes and order
    # The inference model holds the same tensors with each weight-norm pair folded into one weight.
    with torch.device("meta"):
        inference = SynthesizerTrn(_config(manifest))
    folded = fold_weight_norm({k: torch.empty(v, device="meta") for k, v in export.items()})
    assert _shapes(inference) == {k: list(v.shape) for k, v in folded.items()}


def test_fold_weight_norm_equals_torch_weight_norm():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(6, 3, 4, 2))
    g = conv.parametrizations.weight.original0.detach() * 1.7
    v = conv.parametrizations.weight.original1.detach()
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(g)
    folded = fold_weight_norm({"up.weight_g": g, "up.weight_v": v, "up.bias": conv.bias.detach()})
    assert set(folded) == {"up.weight", "up.bias"}
    torch.testing.assert_close(folded["up.weight"], conv.weight.detach(), rtol=1e-6, atol=1e-7)


def _random_weights(config: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sovits_config = config_from_file(config, config["model"]["version"])
    state = SynthesizerTrn(sovits_config, weight_norm=True, posterior=True).state_dict()
    return {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize("version, header", [("v2", b"PK"), ("v2Pro", b"05"), ("v2ProPlus", b"06")])
def test_written_file_reads_back_identically(tmp_path, version, header):
    config = tiny_sovits_config(version)
    path = tmp_path / "voice_e8_s96.pth"
    save_sovits(path, _random_weights(config), config, "8epoch_96iteration", version)
    assert path.read_bytes()[:2] == header
    first = read_sovits(path)
    assert first.version == version and first.info == "8epoch_96iteration" and first.header == header
    assert not any("enc_q" in k for k in first.weights)
    assert {v.dtype for v in first.weights.values()} == {torch.float16}
    # Writing what we read gives the same file contents again.
    again = tmp_path / "again.pth"
    save_sovits(again, first.weights, first.config, first.info, first.version)
    second = read_sovits(again)
    assert second.header == first.header and second.config == first.config
    assert list(second.weights) == list(first.weights)
    for key, value in first.weights.items():
        assert second.weights[key].dtype == value.dtype and torch.equal(second.weights[key], value), key
    # Pickle layout of the official exporter: OrderedDict with weight / config / info.
    payload = read_checkpoint(again).payload
    assert list(payload) == ["weight", "config", "info"]


def test_written_file_decodes(tmp_path):
    config = tiny_sovits_config("v2ProPlus")
    path = tmp_path / "plus.pth"
    save_sovits(path, _random_weights(config), config, "1epoch_1iteration", "v2ProPlus")
    model = load_sovits(path)
    assert model.config.version == "v2ProPlus" and model.config.upsample_kernel_sizes == [20, 16, 16]
    spec = torch.rand(1, 1025, 30)
    torch.manual_seed(1)
    audio = model.decode(
        torch.randint(0, 1024, (1, 1, 7)),
        torch.randint(0, 732, (1, 5)),
        [spec],
        sv_emb=[torch.randn(1, 20480)],
    )
    assert audio.shape == (1, 1, 640 * 14) and torch.isfinite(audio).all()
    audio = model.decode(
        torch.randint(0, 1024, (1, 1, 7)),
        torch.randint(0, 732, (1, 5)),
        spec,
        speed=1.3,
        sv_emb=torch.randn(1, 20480),
    )
    assert audio.shape == (1, 1, 640 * (int(14 / 1.3) + 1))


def test_inference_model_can_be_exported(tmp_path):
    """A folded (inference) state dict is written with weight_g / weight_v pairs again."""
    config = tiny_sovits_config("v2")
    original = tmp_path / "a.pth"
    save_sovits(original, _random_weights(config), config, "1epoch_1iteration", "v2")
    model = load_sovits(original)
    exported = tmp_path / "b.pth"
    save_sovits(exported, model.state_dict(), config, "1epoch_1iteration", "v2")
    a, b = read_sovits(original).weights, read_sovits(exported).weights
    assert list(a) == list(b)
    folded_a, folded_b = fold_weight_norm(a), fold_weight_norm(b)
    for key in folded_a:
        torch.testing.assert_close(folded_b[key].float(), folded_a[key].float(), rtol=2e-3, atol=1e-4)


@needs_fixtures
def test_official_fixture_files_are_identified():
    assert detect_weights(FIXTURES / "sovits_v2.pth").kind == "sovits"
    assert detect_weights(FIXTURES / "sovits_v2.pth").version == "v2"  # small file: size rule says v1
    assert detect_weights(FIXTURES / "sovits_v2pro.pth").version == "v2Pro"
    gpt = detect_weights(FIXTURES / "t2s_v2.ckpt")
    assert (gpt.kind, gpt.version) == ("gpt", "v2")
    assert detect_weights(FIXTURES / "sv_eres2netv2w16s4ep4.ckpt").kind == "sv"


@needs_fixtures
def test_folded_model_matches_weight_norm_model():
    """Folding at load gives the same waveform as evaluating the stored weight-norm pairs each call."""
    sovits_file = read_sovits(FIXTURES / "sovits_v2.pth")
    config = config_from_file(sovits_file.config, sovits_file.version)
    reference = SynthesizerTrn(config, weight_norm=True).eval()
    reference.load_state_dict({k: v.float() for k, v in sovits_file.weights.items()})
    folded = load_sovits(FIXTURES / "sovits_v2.pth")
    torch.manual_seed(0)
    codes, text, spec = (
        torch.randint(0, 1024, (1, 1, 6)),
        torch.randint(0, 732, (1, 4)),
        torch.rand(1, 1025, 20),
    )
    out = [m.decode(codes, text, [spec], noise_scale=0.0) for m in (reference, folded)]
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=2e-5)


@needs_fixtures
def test_mel_filterbank_matches_librosa_constants():
    with np.load(FIXTURES / "spectrogram.npz") as npz:
        settings = json.loads((FIXTURES / "spectrogram.json").read_text())["config"]
        for name, (n_fft, n_mels, sr, _hop, _win, fmin, fmax) in next(iter(settings.values())).items():
            expected = npz[f"mel_basis_{name}"]
            got = mel_filterbank(sr, n_fft, n_mels, fmin, fmax).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)


def test_spectrogram_frame_count():
    for n in (705, 24641, 48000):
        spec = linear_spectrogram(torch.zeros(1, n), 2048, 640, 2048)
        assert spec.shape == (1, 1025, (n + 2 * 704 - 2048) // 640 + 1)
    with pytest.raises(ValueError, match="700 samples is too short"):
        linear_spectrogram(torch.zeros(1, 700), 2048, 640, 2048)


@pytest.mark.parametrize(
    "tokens, speed, frames, mask", [(10, 1.0, 40, 40), (10, 1.5, 28, 27), (12, 1.25, 40, 39)]
)
def test_v4_front_end_lengths(tokens, speed, frames, mask):
    """v4 features: 2 x the 50 Hz encoder length; the WaveNet mask may be one frame shorter (spec 4.11)."""
    config = config_from_file(tiny_sovits_config("v4"), "v4")
    torch.manual_seed(0)
    front = SynthesizerTrnV3(config).eval()
    codes, text, spec = (
        torch.randint(0, 1024, (1, 1, tokens)),
        torch.randint(0, 732, (1, 6)),
        torch.rand(1, 1025, 30),
    )
    features, ge = front.decode_encp(codes, text, spec, speed=speed)
    assert features.shape == (1, 512, frames) and ge.shape == (1, 512, 1)
    assert features[..., :mask].abs().amax(dim=1).min() > 0
    assert torch.all(features[..., mask:] == 0)


def test_pretrained_style_file_with_posterior_encoder_loads(tmp_path, monkeypatch):
    """Pretrained generators keep `enc_q.*`, may be fp32 and are recognised by the MD5 of their head."""
    import hashlib
    from collections import OrderedDict

    import tts.weights

    config = tiny_sovits_config("v2")
    payload = OrderedDict(weight=_random_weights(config), config=config, info="pretrained")
    assert any(k.startswith("enc_q.") for k in payload["weight"])
    path = tmp_path / "s2G2333k.pth"
    torch.save(payload, path)
    head = hashlib.md5(path.read_bytes()[:8192]).hexdigest()
    monkeypatch.setitem(tts.weights.PRETRAINED_MD5, head, ("s2G2333k.pth", "v2"))
    info = detect_weights(path)
    assert (info.kind, info.version, info.pretrained_name) == ("sovits", "v2", "s2G2333k.pth")
    model = load_sovits(path)
    assert not hasattr(model, "enc_q") and model.config.version == "v2"
    torch.testing.assert_close(model.ssl_proj.weight, payload["weight"]["ssl_proj.weight"])


def test_v1_is_decided_by_the_phoneme_table(tmp_path):
    config = tiny_sovits_config("v1")
    path = tmp_path / "v1.pth"
    save_sovits(path, _random_weights(config), config, "1epoch_1iteration", "v1")
    model = load_sovits(path)
    assert model.config.version == "v1" and model.enc_p.text_embedding.num_embeddings == 322
    assert model.ref_enc.spectral[0].fc.in_features == 1025  # v1 style encoder sees every bin
    audio = model.decode(
        torch.randint(0, 1024, (1, 1, 4)), torch.randint(0, 322, (1, 3)), torch.rand(1, 1025, 12)
    )
    assert audio.shape == (1, 1, 640 * 8)


def test_streaming_window_crops_and_crossfades():
    from tts.models.sovits_modules import streaming_window

    y, mask, prev = torch.randn(1, 3, 10), torch.ones(1, 1, 10), torch.randn(1, 3, 2)
    out, out_mask = streaming_window(y, mask, keep_frames=6, overlap=prev, drop_frames=1)
    kept = y[..., 3:9]  # drop the last frame, keep the last 6 of the rest
    w = torch.sin(torch.pi * torch.arange(4) / 4)  # rising 0, 0.71 then falling 1, 0.71
    torch.testing.assert_close(out[..., :2], w[:2] * kept[..., :2] + w[2:] * prev)
    torch.testing.assert_close(out[..., 2:], kept[..., 2:])
    assert out_mask.shape == (1, 1, 6)


@needs_fixtures
def test_decode_streaming_chunk():
    model = load_sovits(FIXTURES / "sovits_v2.pth")
    torch.manual_seed(0)
    codes, text, spec = (
        torch.randint(0, 1024, (1, 1, 9)),
        torch.randint(0, 732, (1, 5)),
        torch.rand(1, 1025, 20),
    )
    torch.manual_seed(3)
    whole = model.decode(codes, text, [spec])
    torch.manual_seed(3)
    same, hidden, _ = model.decode_streaming(codes, text, [spec])
    torch.testing.assert_close(same, whole)
    chunk, tail, tail_mask = model.decode_streaming(
        codes, text, [spec], result_length=4, overlap_frames=hidden[..., -2:]
    )
    assert chunk.shape == (1, 1, 4 * 1280) and tail.shape == (1, 192, 8) and tail_mask.shape == (1, 1, 8)


@pytest.mark.slow  # the v4 front end alone (hard-coded 512-wide WaveNet) is 35 M values
def test_v4_file_loads_front_end_and_cfm(tmp_path, monkeypatch):
    """A plain-zip v4 file (cfm.* keys, config.model.version v4) is built as SynthesizerTrnV3.

    The official DiT is 337 M parameters; a small DiT of the same class keeps the test light.
    """
    from collections import OrderedDict

    import tts.models.cfm as cfm_module

    small = cfm_module.DiTConfig(
        dim=64, depth=1, heads=2, dim_head=32, ff_mult=2, text_dim=512, conv_layers=1
    )
    monkeypatch.setattr(cfm_module, "build_sovits_cfm", lambda config=None: cfm_module.CFM(small))
    config = tiny_sovits_config("v4")
    torch.manual_seed(0)
    model = build_sovits(config_from_file(config, "v4"), weight_norm=True)
    weights = {k: v.half() for k, v in model.state_dict().items() if not k.endswith("rotary_embed.inv_freq")}
    path = tmp_path / "v4.pth"
    torch.save(OrderedDict(weight=weights, config=config, info="1epoch_1iteration"), path)
    assert detect_weights(path).version == "v4"
    loaded = load_sovits(path)
    assert isinstance(loaded, SynthesizerTrnV3) and loaded.config.version == "v4"
    features, _ = loaded.decode_encp(
        torch.randint(0, 1024, (1, 1, 5)), torch.randint(0, 732, (1, 4)), torch.rand(1, 1025, 20)
    )
    assert features.shape == (1, 512, 20)
