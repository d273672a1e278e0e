"""The v2Pro speaker network, the Kaldi filterbank, the v3/v4 CFM/DiT and the v4 vocoder: full-size
layouts against the official manifests, loading errors, and the parts the parity cases do not cover."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.errors import KoeError
from tts.fbank import FbankConfig, fbank, frame_signal, kaldi_mel_banks, povey_window
from tts.models.cfm import (
    CFM,
    VARIANTS,
    DiTConfig,
    build_sovits_cfm,
    denormalize_mel,
    load_cfm_component,
    load_cfm_state,
    normalize_mel,
    rope_inv_freq,
    sample_mel_chunked,
)
from tts.models.generator import Generator
from tts.models.sv import ERes2NetV2, SVConfig, load_sv_model, speaker_embedding
from tts.models.vocoder import VocoderConfig, build_vocoder, load_vocoder
from tts.weights.sovits import build_sovits, config_from_file

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT.parent / "shared" / "spec" / "manifests"
PARITY = ROOT.parent / "shared" / "fixtures" / "parity"
SV_CKPT = PARITY / "sv_eres2netv2w16s4ep4.ckpt"
CFM_CKPT = PARITY / "v4_cfm_component.pth"

needs_manifests = pytest.mark.skipif(
    not MANIFESTS.is_dir(), reason="spec manifests not found beside the repo"
)
needs_fixtures = pytest.mark.skipif(not PARITY.is_dir(), reason="parity fixtures not found beside the repo")


def _manifest(name: str) -> dict:
    return json.loads((MANIFESTS / name).read_text())


def _layout(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, tuple[list[int], str]]:
    return {prefix + k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


def _expected(manifest: dict, prefix: str = "") -> dict[str, tuple[list[int], str]]:
    return {k: (v["shape"], v["dtype"]) for k, v in manifest["state_dict"].items() if k.startswith(prefix)}


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------ full-size layouts (meta tensors: no memory)


@needs_manifests
def test_official_sv_network_matches_manifest():
    manifest = _manifest("sv_eres2netv2.json")
    cfg = manifest["config"]
    with torch.device("meta"):
        model = ERes2NetV2(SVConfig.from_constructor_args(cfg))
    assert _layout(model.state_dict()) == _expected(manifest)
    assert _param_count(model) == manifest["params"]
    assert model.cfg.pooled_dim == 20480
    assert _param_count(model) - _param_count(model.seg_1) == manifest["params_used_by_forward3"]


@needs_manifests
def test_official_v4_vocoder_matches_manifest():
    manifest = _manifest("vocoder_v4.json")
    with torch.device("meta"):
        model = build_vocoder(VocoderConfig.from_dict(manifest["config"]))
    assert _layout(model.state_dict()) == _expected(manifest)
    assert _param_count(model) == manifest["params"]
    assert VocoderConfig().hop_length == 480


@needs_manifests
def test_official_dit_matches_cfm_keys_of_sovits_v4():
    manifest = _manifest("sovits_v4.json")
    with torch.device("meta"):
        cfm = build_sovits_cfm()
    assert _layout(cfm.state_dict(), "cfm.") == _expected(manifest, "cfm.")
    assert _param_count(cfm) == manifest["param_groups"]["cfm"]


@needs_manifests
def test_whole_v4_synthesizer_with_our_cfm_matches_manifest():
    manifest = _manifest("sovits_v4.json")
    config = config_from_file(manifest["config"], "v4")
    with torch.device("meta"):
        model = build_sovits(config, weight_norm=True)  # weight-norm pairs as in the official state dict
    assert _layout(model.state_dict()) == _expected(manifest)
    assert _param_count(model) == manifest["params"]


# ------------------------------------------------------------------ filterbank


@needs_fixtures
def test_fbank_constants_match_kaldi_reference():
    arrays = np.load(PARITY / "sv_eres2netv2.npz")
    np.testing.assert_allclose(
        kaldi_mel_banks(FbankConfig()).numpy(), arrays["kaldi_mel_banks"], atol=1e-6, rtol=1e-5
    )
    np.testing.assert_allclose(povey_window(400).numpy(), arrays["povey_window"], atol=1e-6, rtol=1e-5)


def test_fbank_frames_and_shape():
    cfg = FbankConfig()
    assert (cfg.window_size, cfg.window_shift, cfg.fft_size) == (400, 160, 512)
    wave = torch.linspace(-0.5, 0.5, 16000)
    frames = frame_signal(wave, cfg)
    assert frames.shape == (1 + (16000 - 400) // 160, 400)
    assert torch.equal(frames[3], wave[480:880])
    assert fbank(wave[None]).shape == (frames.shape[0], 80)
    assert fbank(wave[:399]).shape == (0, 80)


def test_fbank_rejects_unsupported_options():
    with pytest.raises(ValueError, match="dither=1.0"):
        FbankConfig.from_kaldi_options({"dither": 1.0})
    with pytest.raises(ValueError, match="one channel"):
        fbank(torch.zeros(2, 1000))


# ------------------------------------------------------------------ speaker network


@needs_fixtures
def test_speaker_embedding_from_waveform_matches_fixture():
    manifest = json.loads((PARITY / "sv_eres2netv2.json").read_text())
    arrays = np.load(PARITY / "sv_eres2netv2.npz")
    model = load_sv_model(SV_CKPT, SVConfig.from_constructor_args(manifest["config"]["constructor_args"]))
    emb = speaker_embedding(model, torch.from_numpy(arrays["wave_0"]))
    assert emb.shape == (1, model.cfg.pooled_dim)
    np.testing.assert_allclose(emb.numpy(), arrays["sv_emb_0"], atol=1e-3, rtol=1e-4)


def test_sv_missing_file(tmp_path):
    with pytest.raises(KoeError, match="pretrained_eres2netv2w24s4ep4.ckpt"):
        load_sv_model(tmp_path / "nope.ckpt")


def test_sv_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.ckpt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(KoeError, match="plain state dict"):
        load_sv_model(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(KoeError, match="cannot read"):
        load_sv_model(path)


@needs_fixtures
def test_sv_size_mismatch_names_keys(tmp_path):
    # the small fixture network loaded with the official sizes
    with pytest.raises(
        KoeError, match=r"shape mismatches: .*conv1.weight \(8, 1, 3, 3\) \(model expects \(64, 1, 3, 3\)\)"
    ):
        load_sv_model(SV_CKPT)
    state = torch.load(SV_CKPT, weights_only=True)
    del state["layer3_ds.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.ckpt"
    torch.save(state, path)
    cfg = SVConfig(base_width=16, m_channels=8, num_blocks=(2, 2, 2, 2), embedding_size=16)
    with pytest.raises(KoeError, match=r"missing keys: layer3_ds.weight; unexpected keys: extra.weight"):
        load_sv_model(path, cfg)


# ------------------------------------------------------------------ CFM / DiT


def test_dit_config_rejects_long_skip():
    with pytest.raises(KoeError, match="long_skip_connection"):
        DiTConfig.from_dict({"dim": 64, "long_skip_connection": True})


@needs_fixtures
def test_cfm_without_stored_rope_frequencies_uses_computed_ones():
    ckpt = torch.load(CFM_CKPT, weights_only=True)
    weights = dict(ckpt["weight"])
    stored = weights.pop("cfm.estimator.rotary_embed.inv_freq")
    cfm = load_cfm_state(CFM(DiTConfig.from_dict(ckpt["config"]["DiT"])), weights, "test")
    computed = cfm.estimator.rotary_embed.inv_freq
    assert torch.equal(computed, rope_inv_freq(64))
    assert not torch.equal(computed, stored.float())  # the file's values are fp16-rounded, and preferred
    assert torch.equal(load_cfm_component(CFM_CKPT).estimator.rotary_embed.inv_freq, stored.float())


@needs_fixtures
def test_cfm_wrong_keys(tmp_path):
    ckpt = torch.load(CFM_CKPT, weights_only=True)
    ckpt["weight"]["cfm.estimator.bogus"] = torch.zeros(1)
    del ckpt["weight"]["cfm.estimator.proj_out.bias"]
    path = tmp_path / "bad.pth"
    torch.save(ckpt, path)
    with pytest.raises(
        KoeError, match=r"missing keys: estimator.proj_out.bias; unexpected keys: estimator.bogus"
    ):
        load_cfm_component(path)
    torch.save({"weight": {}}, path)
    with pytest.raises(KoeError, match="'config' -> 'DiT'"):
        load_cfm_component(path)


@needs_fixtures
def test_chunked_sampling_equals_direct_calls():
    cfm = load_cfm_component(CFM_CKPT)
    gen = torch.Generator().manual_seed(0)
    ref_features = torch.randn(1, 512, 12, generator=gen)
    ref_mel = torch.randn(1, 100, 10, generator=gen).clamp(-1, 1)
    features = torch.randn(1, 512, 25, generator=gen)
    variant = VARIANTS["v4"].__class__(**{**VARIANTS["v4"].__dict__, "chunk_frames": 20})  # windows of 10
    torch.manual_seed(7)
    mel = sample_mel_chunked(cfm, ref_features, ref_mel, features, variant, n_timesteps=2)
    assert mel.shape == (1, 100, 25)

    torch.manual_seed(7)  # replay: prompt = last 10 frames, then each window's tail prompts the next
    prompt_f, prompt_m, pieces = ref_features[..., -10:], ref_mel, []
    for start in (0, 10, 20):
        window = features[..., start : start + 10]
        cond = torch.cat([prompt_f, window], -1).transpose(1, 2)
        out = cfm.inference(cond, torch.tensor([cond.shape[1]]), prompt_m, 2)[..., 10:]
        pieces.append(out)
        prompt_m, prompt_f = out[..., -10:], window[..., -10:]
    assert torch.equal(mel, torch.cat(pieces, -1))


def test_mel_normalisation_round_trip():
    log_mel = torch.tensor([-12.0, -5.0, 2.0])
    assert torch.allclose(normalize_mel(log_mel), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(denormalize_mel(normalize_mel(log_mel)), log_mel)


# ------------------------------------------------------------------ vocoder


def _small_vocoder_config() -> VocoderConfig:
    return VocoderConfig(
        resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=[[1, 3], [1, 3]],
        upsample_rates=[4, 3],
        upsample_initial_channel=16,
        upsample_kernel_sizes=[8, 5],
    )


def test_vocoder_folds_weight_norm_pairs(tmp_path):
    cfg = _small_vocoder_config()
    torch.manual_seed(0)
    normed = Generator(
        cfg.initial_channel, cfg.resblock, cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes,
        cfg.upsample_rates, cfg.upsample_initial_channel, cfg.upsample_kernel_sizes,
        post_bias=True, weight_norm=True,
    )  # fmt: skip
    with torch.no_grad():  # make g differ from |v| so folding matters
        for name, p in normed.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(1.5)
    state = normed.state_dict()
    assert "ups.0.weight_g" in state and "ups.0.weight" not in state
    path = tmp_path / "vocoder.pth"
    torch.save(state, path)
    vocoder = load_vocoder(path, cfg)
    mel = torch.randn(1, 100, 7)
    with torch.no_grad():
        wave = vocoder(mel)
        assert wave.shape == (1, 1, 7 * cfg.hop_length)
        torch.testing.assert_close(wave, normed(mel), atol=1e-6, rtol=1e-5)


def test_vocoder_load_errors(tmp_path):
    with pytest.raises(KoeError, match="gsv-v4-pretrained/vocoder.pth"):
        load_vocoder(tmp_path / "missing.pth")
    cfg = _small_vocoder_config()
    state = build_vocoder(cfg).state_dict()
    del state["conv_post.bias"]
    path = tmp_path / "vocoder.pth"
    torch.save(state, path)
    with pytest.raises(KoeError, match="missing keys: conv_post.bias"):
        load_vocoder(path, cfg)
