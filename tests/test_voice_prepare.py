"""`koe voice prepare`: espeak-ng clips and tiny official-format models -> the official experiment folder."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import soundfile
import soxr
import torch

from agent.cli import main
from training.audio import load_audio_32k
from training.dataset import read_list
from training.prepare import (
    PrepareModels,
    loudness_mix,
    prepare_audio,
    prepare_dataset,
    read_name2semantic,
    read_name2text,
    to_int16_wrapping,
)
from voice_helpers import (
    copy_experiment,
    make_dataset,
    prepared_experiment,
    tiny_sv_config,
    write_pretrained,
)


@pytest.fixture(scope="module")
def prepared():
    return prepared_experiment("v2")


def test_text_step_writes_phones_and_bert_for_chinese_only(prepared):
    exp = prepared.exp_dir
    lines = (exp / "2-name2text.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(prepared.dataset.clips)  # one line each, trailing \n
    rows = read_name2text(exp / "2-name2text.txt")
    english = rows["clip_00.wav"]
    assert english[1] == "None" and english[2] == prepared.dataset.texts[0]
    assert english[0].split(" ")[:3] == ["DH", "AH0", "W"]
    chinese = rows[prepared.dataset.clips[-1].name]
    word2ph = [int(n) for n in chinese[1].strip("[]").split(", ")]
    phones = chinese[0].split(" ")
    assert sum(word2ph) == len(phones) and len(word2ph) == len(chinese[2])
    assert chinese[2] == "春天来了,花园里的花都开了."
    assert [p.name for p in (exp / "3-bert").iterdir()] == [prepared.dataset.clips[-1].name + ".pt"]
    bert = torch.load(exp / "3-bert" / (prepared.dataset.clips[-1].name + ".pt"), weights_only=True)
    assert bert.shape == (1024, len(phones)) and bert.dtype == torch.float32


def test_audio_step_mix_and_hubert_scaling(prepared):
    from transformers import HubertModel

    exp = prepared.exp_dir
    clip = prepared.dataset.clips[1]
    x = load_audio_32k(clip)
    peak = np.abs(x).max()
    copy, rate = soundfile.read(exp / "5-wav32k" / clip.name, dtype="int16")
    assert rate == 32000
    expected = np.trunc(x / peak * (0.95 * 0.5 * 32768) + 0.5 * 32768 * x).astype(np.int16)
    np.testing.assert_array_equal(copy, expected)

    features = torch.load(exp / "4-cnhubert" / f"{clip.name}.pt", weights_only=True)
    h = x / peak * (0.95 * 0.5 * 1145.14) + 0.5 * 1145.14 * x
    h16 = soxr.resample(h.astype(np.float32), 32000, 16000, quality="HQ")[: math.ceil(len(x) / 2)]
    assert features.shape == (1, 768, (len(h16) - 400) // 320 + 1)
    model = HubertModel.from_pretrained(prepared.pretrained.hubert).float().eval()
    with torch.no_grad():
        reference = model(torch.from_numpy(h16)[None]).last_hidden_state.transpose(1, 2)
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-4)


def test_semantic_tokens_are_nearest_codes_of_the_pretrained_sovits(prepared):
    from tts.weights.sovits import load_sovits

    exp = prepared.exp_dir
    tsv = (exp / "6-name2semantic.tsv").read_text(encoding="utf-8")
    assert tsv.startswith("item_name\tsemantic_audio\n") and tsv.endswith("\n")
    rows = read_name2semantic(exp / "6-name2semantic.tsv")
    assert list(rows) == [c.name for c in prepared.dataset.clips]
    sovits = load_sovits(prepared.pretrained.sovits)
    codebook = sovits.quantizer.vq.layers[0]._codebook.embed  # [1024, 768]
    for name, codes in rows.items():
        ssl = torch.load(exp / "4-cnhubert" / f"{name}.pt", weights_only=True)
        with torch.no_grad():
            projected = sovits.ssl_proj(ssl)[0].T  # [T25, 768]
        distances = torch.cdist(projected.double(), codebook.double())  # [T25, 1024]
        chosen = torch.tensor([int(c) for c in codes.split()])
        assert len(chosen) == ssl.shape[-1] // 2
        # the nearest code (up to float32 rounding of near-ties)
        gap = distances.gather(1, chosen[:, None])[:, 0] - distances.min(dim=1).values
        assert (gap <= 1e-5 * distances.min(dim=1).values).all()
        assert (chosen == distances.argmin(dim=1)).float().mean() > 0.8


def test_prepare_is_incremental(prepared, tmp_path):
    exp = copy_experiment(prepared, tmp_path)
    (exp / "4-cnhubert" / "clip_02.wav.pt").unlink()
    entries = [entry for _, entry in read_list(prepared.dataset.list_path)[0]]
    models = PrepareModels(prepared.pretrained.sovits, prepared.pretrained.hubert, prepared.pretrained.bert)
    results = prepare_dataset(entries, prepared.dataset.list_path, exp, "v2", models)
    assert results["text"].done == [] and len(results["text"].reused) == len(entries)
    assert results["audio"].done == ["clip_02.wav"]
    assert (exp / "6-name2semantic.tsv").read_bytes() == (
        prepared.exp_dir / "6-name2semantic.tsv"
    ).read_bytes()


def test_silent_and_overloud_clips_are_skipped_and_loud_floats_wrap(tmp_path):
    from training.dataset import ListEntry

    rng = np.random.default_rng(0)
    tone = (np.sin(np.arange(32000) * 0.05) * 0.5).astype(np.float32) + rng.normal(0, 0.01, 32000).astype(
        np.float32
    )
    soundfile.write(tmp_path / "silent.wav", np.zeros(32000, np.float32), 32000, subtype="PCM_16")
    soundfile.write(tmp_path / "huge.wav", tone * 6, 32000, subtype="FLOAT")  # peak 3 > 2.2
    soundfile.write(tmp_path / "loud.wav", tone * 3, 32000, subtype="FLOAT")  # peak 1.5: int16 wraps
    entries = [ListEntry(str(tmp_path / n), "a", "EN", "hi") for n in ("silent.wav", "huge.wav", "loud.wav")]
    calls = []
    result = prepare_audio(
        entries, tmp_path / "exp", tmp_path / "x.list", lambda w: calls.append(w) or torch.ones(1, 768, 3)
    )
    reasons = dict(result.skipped)
    assert "digital silence" in reasons["silent.wav"] and "above 2.2" in reasons["huge.wav"]
    assert result.done == ["loud.wav"] and len(calls) == 1
    written, _ = soundfile.read(tmp_path / "exp" / "5-wav32k" / "loud.wav", dtype="int16")
    x = load_audio_32k(tmp_path / "loud.wav")
    mixed = loudness_mix(x, float(np.abs(x).max()), 32768.0)
    assert mixed.max() > 32767  # would clip, but the official cast wraps around
    np.testing.assert_array_equal(written, to_int16_wrapping(mixed))
    assert written.min() < -30000 and to_int16_wrapping(np.array([32768.7, -32769.2])).tolist() == [
        -32768,
        32767,
    ]


def test_v2pro_writes_speaker_embeddings(tmp_path):
    from tts.models.sv import load_sv_model, speaker_embedding
    from tts.resample import sinc_resample

    dataset = make_dataset(tmp_path, sentences=[("Good morning to you.", "en-us", 160)])
    pretrained = write_pretrained(tmp_path / "pre", "v2Pro")
    entries = [entry for _, entry in read_list(dataset.list_path)[0]]
    models = PrepareModels(pretrained.sovits, pretrained.hubert, None, pretrained.sv, tiny_sv_config())
    results = prepare_dataset(entries, dataset.list_path, tmp_path / "exp", "v2Pro", models)
    assert results["speaker"].done == ["clip_00.wav"]
    embedding = torch.load(tmp_path / "exp" / "7-sv_cn" / "clip_00.wav.pt", weights_only=True)
    assert embedding.shape == (1, 20480) and torch.isfinite(embedding).all()
    audio, _ = soundfile.read(tmp_path / "exp" / "5-wav32k" / "clip_00.wav", dtype="float32")
    model = load_sv_model(pretrained.sv, tiny_sv_config())
    expected = speaker_embedding(model, sinc_resample(torch.from_numpy(audio)[None], 32000, 16000))
    torch.testing.assert_close(embedding, expected)


def test_prepare_command_end_to_end_and_bad_datasets(tmp_path, capsys):
    dataset = make_dataset(tmp_path, sentences=[("Good morning to you.", "en-us", 160)])
    pretrained = write_pretrained(tmp_path / "pre", "v2")
    flags = [
        "--name", "aria", "--version", "v2", "--exp-dir", str(tmp_path / "runs"),
        "--sovits-pretrained", str(pretrained.sovits), "--hubert", str(pretrained.hubert),
        "--bert", str(pretrained.bert), "--device", "cpu",
    ]  # fmt: skip
    assert main(["voice", "prepare", str(dataset.list_path), *flags]) == 0
    assert "prepared 1 of 1 clips" in capsys.readouterr().out
    assert len(read_name2semantic(tmp_path / "runs" / "aria" / "6-name2semantic.tsv")) == 1

    good = dataset.list_path.read_text(encoding="utf-8")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    shutil.copy(dataset.clips[0], tmp_path / "de.wav")
    bad = tmp_path / "bad.list"
    bad.write_text(
        good
        + f"{tmp_path / 'missing.wav'}|aria|EN|Where is it?\n"
        + f"{tmp_path / 'broken.wav'}|aria|EN|Broken.\n"
        + f"{tmp_path / 'de.wav'}|aria|DE|Guten Morgen.\n",
        encoding="utf-8",
    )
    assert main(["voice", "prepare", str(bad), *flags]) == 1
    out = capsys.readouterr().out
    assert "koe voice check" in out and "--skip-bad" in out
    assert "missing.wav" in out and "broken.wav" in out and "'DE'" in out
    assert "Traceback" not in out

    shutil.rmtree(tmp_path / "runs")
    assert main(["voice", "prepare", str(bad), *flags, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "prepared 1 of 1 clips" in out  # the three bad lines were left out
    empty = tmp_path / "empty.list"
    empty.write_text("", encoding="utf-8")
    assert main(["voice", "prepare", str(empty), *flags]) == 1
    assert "no usable lines" in capsys.readouterr().out
    assert main(["voice", "prepare", str(tmp_path / "nope.list"), *flags]) == 2
    assert ".list file not found" in capsys.readouterr().err
