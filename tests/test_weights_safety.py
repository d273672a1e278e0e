"""Weight files that are malicious, damaged or of the wrong kind are refused with clear errors."""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from agent.errors import KoeError
from tts.weights import HParams, detect_weights, expect_kind, plain_config, read_checkpoint
from tts.weights.sovits import load_sovits, read_sovits

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures" / "parity"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures not found beside the repo")


class _Evil:
    """Unpickling this with plain pickle would run a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_bytes(obj, header: bytes = b"PK") -> bytes:
    if isinstance(obj, dict) and isinstance(obj.get("config"), HParams):
        obj["config"] = plain_config(
            obj["config"]
        )  # our HParams stand-in is not pickled back as utils.HParams
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return header + buffer.getvalue()[2:]


def _sovits_like(config) -> OrderedDict:
    payload = OrderedDict()
    payload["weight"] = {"enc_p.text_embedding.weight": torch.zeros(732, 4, dtype=torch.float16)}
    payload["config"] = config
    payload["info"] = "1epoch_1iteration"
    return payload


def _official_hparams_class(monkeypatch) -> type:
    """A class pickled as `utils.HParams`, like the one the official exporter stores as config."""
    utils = types.ModuleType("utils")
    utils.HParams = type("HParams", (), {"__module__": "utils"})
    monkeypatch.setitem(sys.modules, "utils", utils)
    return utils.HParams


@pytest.mark.parametrize("header", [b"PK", b"05"])
@pytest.mark.parametrize("where", ["top", "config", "hparams"])
def test_crafted_reduce_is_refused_and_never_runs(tmp_path, monkeypatch, header, where):
    marker = tmp_path / "executed"
    evil = _Evil(marker)
    if where == "top":
        obj = evil
    elif where == "config":
        obj = _sovits_like({"model": {"version": evil}})
    else:
        official = _official_hparams_class(monkeypatch)
        model, config = official(), official()
        model.version = evil
        config.model = model
        obj = _sovits_like(config)
    path = tmp_path / "voice.pth"
    path.write_bytes(_torch_bytes(obj, header))
    for reader in (read_checkpoint, detect_weights, load_sovits):
        with pytest.raises(KoeError, match="refused to load .*nothing in it was executed"):
            reader(path)
    assert not marker.exists()


def test_plain_pickle_file_is_not_opened(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "voice.pth"
    path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(KoeError, match="is not a GPT-SoVITS weight file"):
        load_sovits(path)
    assert not marker.exists()


def test_hparams_accepts_only_a_plain_attribute_dict():
    with pytest.raises(pickle.UnpicklingError):
        HParams().__setstate__(["not", "a", "dict"])
    params = HParams()
    params.__setstate__({"model": {"version": "v2"}})
    assert params.model == {"version": "v2"}


@needs_fixtures
def test_truncated_file(tmp_path):
    data = (FIXTURES / "sovits_v2.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KoeError, match="truncated or damaged"):
        load_sovits(path)


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"PK" + os.urandom(4096)])
def test_random_or_empty_file(tmp_path, content):
    path = tmp_path / "random.pth"
    path.write_bytes(content)
    with pytest.raises(KoeError, match=str(path)):
        load_sovits(path)


def test_missing_file(tmp_path):
    with pytest.raises(KoeError, match="weight file not found"):
        load_sovits(tmp_path / "nope.pth")


@needs_fixtures
def test_gpt_file_given_as_sovits():
    with pytest.raises(KoeError, match="is a GPT .*expected a SoVITS weight file.*Pass it as the GPT model"):
        load_sovits(FIXTURES / "t2s_v2.ckpt")


@needs_fixtures
def test_sovits_file_given_as_gpt():
    path = FIXTURES / "sovits_v2.pth"
    with pytest.raises(
        KoeError, match="is a SoVITS weight file .*expected a GPT .*Pass it as the SoVITS model"
    ):
        expect_kind(path, detect_weights(path), "gpt")
    from tts.weights.gpt import load_gpt  # the GPT loader's own check (tts/weights/gpt.py)

    for sovits in ("sovits_v2.pth", "sovits_v2pro.pth"):
        with pytest.raises(KoeError, match="SoVITS"):
            load_gpt(FIXTURES / sovits)


@needs_fixtures
def test_speaker_model_given_as_sovits():
    with pytest.raises(KoeError, match="ERes2NetV2 speaker-verification model"):
        load_sovits(FIXTURES / "sv_eres2netv2w16s4ep4.ckpt")


@needs_fixtures
def test_missing_and_unexpected_keys_are_listed(tmp_path):
    payload = read_checkpoint(FIXTURES / "sovits_v2.pth").payload
    weights = dict(payload["weight"])
    del weights["dec.conv_post.weight"]
    del weights["flow.flows.2.post.bias"]
    weights["dec.extra_layer.weight"] = torch.zeros(3, dtype=torch.float16)
    payload["weight"] = weights
    path = tmp_path / "edited.pth"
    path.write_bytes(_torch_bytes(payload))
    with pytest.raises(KoeError) as err:
        load_sovits(path)
    message = str(err.value)
    assert "missing keys: dec.conv_post.weight, flow.flows.2.post.bias" in message
    assert "unexpected keys: dec.extra_layer.weight" in message


@needs_fixtures
def test_shape_mismatch_is_listed(tmp_path):
    payload = read_checkpoint(FIXTURES / "sovits_v2.pth").payload
    payload["weight"]["enc_p.proj.bias"] = torch.zeros(7, dtype=torch.float16)
    path = tmp_path / "edited.pth"
    path.write_bytes(_torch_bytes(payload))
    with pytest.raises(
        KoeError, match=r"shape mismatches: enc_p.proj.bias \(7,\) \(model expects \(384,\)\)"
    ):
        load_sovits(path)


@needs_fixtures
def test_pro_weights_without_header_or_version(tmp_path):
    payload = read_checkpoint(FIXTURES / "sovits_v2pro.pth").payload
    del payload["config"].model.version
    path = tmp_path / "pro_plain.pth"
    path.write_bytes(_torch_bytes(payload))  # plain zip: the '05' header is gone
    with pytest.raises(KoeError, match="v2Pro/v2ProPlus weights .*neither the '05'/'06' header"):
        load_sovits(path)


@pytest.mark.parametrize("header, extra", [(b"04", {}), (b"PK", {"lora_rank": 32})])
def test_lora_file_is_refused(tmp_path, header, extra):
    payload = _sovits_like({"model": {"version": "v4"}})
    payload.update(extra)
    path = tmp_path / "lora.pth"
    path.write_bytes(_torch_bytes(payload, header))
    assert detect_weights(path).is_lora
    with pytest.raises(KoeError, match="LoRA files are not supported"):
        read_sovits(path)


def test_official_hparams_config_is_read_as_plain_dict(tmp_path, monkeypatch):
    """The control for the crafted cases: a benign utils.HParams config loads."""
    official = _official_hparams_class(monkeypatch)
    model, config = official(), official()
    model.version = "v2"
    config.model, config.name = model, "voice"
    path = tmp_path / "voice.pth"
    path.write_bytes(_torch_bytes(_sovits_like(config)))
    monkeypatch.delitem(sys.modules, "utils")  # reading must not need the class
    assert read_sovits(path).config == {"model": {"version": "v2"}, "name": "voice"}


def test_a_failed_atomic_write_keeps_the_old_file_and_no_partial_named_like_weights(tmp_path):
    import torch

    from tts.weights import save_atomic

    target = tmp_path / "voice-e1.ckpt"
    save_atomic({"weight": torch.ones(2)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"weight": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["weight"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["voice-e1.ckpt"]  # the partial file is gone
