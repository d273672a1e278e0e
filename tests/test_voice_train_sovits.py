"""`koe voice train-sovits` and the SoVITS export on tiny models (CPU, a few steps each).

The experiment folder is written directly in the layout `koe voice prepare` produces (random HuBERT
features and speaker embeddings, harmonic test tones as the 32 kHz clips), so these tests exercise
the trainer alone; the pretrained generator is the tiny official-format file of voice_helpers and
the discriminator a shrunk official-layout `s2D` file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from agent.errors import KoeError
from training import losses
from training.checkpoints import load_checkpoint
from training.discriminator import MultiPeriodDiscriminator, periods_for
from training.export import export_sovits_checkpoint
from training.prepare import HUBERT_DIR, NAME2TEXT, SV_DIR, WAV32K_DIR
from training.sovits_data import BucketBatchSampler, SoVITSDataset, collate
from training.sovits_train import (
    SoVITSTrainer,
    SoVITSTrainSettings,
    epoch_learning_rate,
    optimizer_groups,
    suggest_batch_size,
    train_sovits,
)
from tts.models.sovits import SynthesizerTrn
from tts.weights.sovits import config_from_file, load_sovits, read_sovits
from voice_helpers import tiny_sovits_config, write_tiny_sovits

ROOT = Path(__file__).resolve().parent.parent
SPEC_KEYS = ROOT.parent / "shared" / "spec" / "gpt-sovits-export-keys.json"
PHONES = ["HH", "AH0", "L", "OW1", "W", "ER1", "L", "D", ".", "SP"]
TINY_D_DIVISOR = 16


def tone(seconds: float, seed: int) -> np.ndarray:
    """A few harmonics with a slow vibrato: stands in for a voiced clip (float32, 32 kHz)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 32000)) / 32000
    f0 = 110 + 40 * rng.random() + 5 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 32000
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def make_experiment(folder: Path, version: str = "v2", seconds=(1.2, 1.4, 1.6, 1.3)) -> Path:
    """An experiment folder as `koe voice prepare` writes it: phones, HuBERT, 32 kHz copies (+ sv)."""
    for sub in (HUBERT_DIR, WAV32K_DIR, SV_DIR):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    generator = torch.Generator().manual_seed(0)
    for i, length in enumerate(seconds):
        name = f"clip_{i:02d}.wav"
        wave = tone(length, i)
        soundfile.write(folder / WAV32K_DIR / name, (wave * 32767).astype(np.int16), 32000, subtype="PCM_16")
        frames = (len(wave) - 800) // 640 + 1  # HuBERT frames of the clip (one fewer than the spectrogram)
        torch.save(torch.randn(1, 768, frames, generator=generator), folder / HUBERT_DIR / f"{name}.pt")
        if version in ("v2Pro", "v2ProPlus"):
            torch.save(torch.randn(1, 20480, generator=generator) * 0.1, folder / SV_DIR / f"{name}.pt")
        phones = PHONES[: 4 + i]
        lines.append(f"{name}\t{' '.join(phones)}\tNone\thello world")
    (folder / NAME2TEXT).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_tiny_discriminator(path: Path, version: str = "v2", seed: int = 0) -> Path:
    """A pretrained-style `s2D*.pth` (official layout: {"weight": state dict}) of a shrunk discriminator."""
    torch.manual_seed(seed)
    model = MultiPeriodDiscriminator(periods_for(version), TINY_D_DIVISOR)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(OrderedDict(weight=model.state_dict(), info="pretrained"), path)
    return path


def tiny_pretrained(folder: Path, version: str = "v2") -> tuple[Path, Path]:
    return (
        write_tiny_sovits(folder / f"s2G_{version}.pth", version),
        write_tiny_discriminator(folder / f"s2D_{version}.pth", version),
    )


def settings_for(tmp_path: Path, version: str = "v2", seconds=(1.2, 1.4, 1.6, 1.3), **overrides):
    exp = make_experiment(tmp_path / "logs" / "aria", version, seconds)
    g, d = tiny_pretrained(tmp_path / "pretrained", version)
    options = dict(
        version=version, batch_size=2, epochs=1, save_every_epochs=1, duplicate_below=0, num_workers=0
    )
    return SoVITSTrainSettings(exp, g, d, **{**options, **overrides})


# --- building blocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v2", "v2Pro"])
def test_discriminator_has_the_official_keys_and_shapes(version):
    expected = json.loads(SPEC_KEYS.read_text())[f"discriminator_{version}_full_checkpoint_only"]
    with torch.device("meta"):
        model = MultiPeriodDiscriminator(periods_for(version))
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == list(expected.items())


def test_losses_follow_the_formulas():
    real, fake = [torch.tensor([[0.5, 1.0]])], [torch.tensor([[0.0, 2.0]])]
    assert losses.discriminator_loss(real, fake).item() == pytest.approx((0.25 + 0) / 2 + (0 + 4) / 2)
    assert losses.generator_adversarial_loss(fake).item() == pytest.approx((1 + 1) / 2)
    features_real = [[torch.ones(1, 2, 3)], [torch.zeros(1, 4)]]
    features_fake = [[torch.zeros(1, 2, 3)], [torch.full((1, 4), 0.5)]]
    assert losses.feature_matching_loss(features_real, features_fake).item() == pytest.approx(2 * (1 + 0.5))
    # KL of identical Gaussians with z_p at the prior mean: logs_p - logs_q - 0.5 per element.
    z = torch.zeros(1, 2, 3)
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    kl = losses.kl_loss(z, torch.full_like(z, -1.0), z, z, mask)
    assert kl.item() == pytest.approx(2 * 2 * 0.5 / 2)  # (0 + 1 - 0.5) * 2 channels * 2 frames / 2 frames


def test_bucket_sampler_pads_shards_and_keeps_buckets_apart():
    frames = [40, 50, 60, 310, 320, 10, 2500]  # two buckets, one clip too short, one too long
    halves = [BucketBatchSampler(frames, batch_size=2, world_size=2, rank=r) for r in (0, 1)]
    for sampler in halves:
        sampler.set_epoch(3)
    batches = [list(s) for s in halves]
    assert all(len(s) == 2 for s in halves) and [len(b) for b in batches] == [2, 2]
    seen = set()
    for batch in batches[0] + batches[1]:
        assert len(batch) == 2
        assert len({frames[i] > 300 for i in batch}) == 1  # one bucket per batch
        seen |= set(batch)
    assert seen == {0, 1, 2, 3, 4}
    assert list(halves[0]) == batches[0]  # the same epoch gives the same order


def test_learning_rate_groups_and_schedule():
    config = config_from_file(tiny_sovits_config(), "v2")
    model = SynthesizerTrn(config, weight_norm=True, posterior=True)
    groups = optimizer_groups(model, 1e-4, 0.4)
    assert [g["lr"] for g in groups] == [1e-4, 4e-5, 4e-5, 4e-5]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.enc_p.text_embedding.parameters()}
    assert epoch_learning_rate(1e-4, 0.999875, 1) == pytest.approx(1e-4 * 0.999875)
    assert suggest_batch_size(8, 2 * 2**30, 18 * 2**30, 16 * 2**30) == 6  # (14.4 - 2) GiB / 2 GiB per item


def test_dataset_items_and_collate(tmp_path):
    exp = make_experiment(tmp_path / "exp", "v2Pro")
    dataset = SoVITSDataset(exp, "v2Pro", duplicate_below=100)
    assert len(dataset) == 4 * 25  # small datasets are repeated max(2, 100 // n) times
    batch = collate([dataset[i] for i in range(3)])
    assert batch["ssl"].shape[-1] == batch["spec"].shape[-1] and batch["spec"].shape[-1] % 2 == 0
    assert batch["spec"].shape[1] == 1025 and batch["sv"].shape == (3, 20480)
    assert batch["spec_lengths"].tolist() == sorted(batch["spec_lengths"].tolist(), reverse=True)


def test_empty_experiment_is_a_clear_error(tmp_path):
    (tmp_path / "exp").mkdir()
    with pytest.raises(KoeError, match="2-name2text.txt not found"):
        SoVITSDataset(tmp_path / "exp", "v2")


def test_exported_voice_is_refused_as_pretrained(tmp_path):
    s = settings_for(tmp_path)
    weights = read_sovits(s.pretrained_g)
    exported = tmp_path / "exported.pth"
    torch.save({"weight": {k: v for k, v in weights.weights.items() if "enc_q" not in k}, "config": weights.config,
                "info": "x"}, exported)  # fmt: skip
    s.pretrained_g = exported
    with pytest.raises(KoeError, match="no posterior encoder"):
        SoVITSTrainer(s)


# --- training ------------------------------------------------------------------------------------------


def test_loss_goes_down_on_a_fixed_batch(tmp_path):
    trainer = SoVITSTrainer(settings_for(tmp_path))
    update = trainer.update
    for optim in (update.optim_g, update.optim_d):
        for group in optim.param_groups:
            group["lr"] = 1e-3
    batch = collate([trainer.dataset[i] for i in range(2)])
    torch.manual_seed(0)
    first = [update.step(batch) for _ in range(2)]
    for _ in range(6):
        last = update.step(batch)
    assert all(np.isfinite(v) for v in last.values())
    assert last["loss/g/mel"] < first[0]["loss/g/mel"]
    assert last["loss/g/kl"] < first[0]["loss/g/kl"]


def _check_export_format(path: Path, version: str, model_keys: list[str], info: str) -> None:
    """Spec 8.1: header bytes, top-level layout, fp16 weights without enc_q in model order, plain-dict config."""
    data = path.read_bytes()
    assert data[:2] == {"v2Pro": b"05", "v2ProPlus": b"06"}.get(version, b"PK")
    payload = torch.load(__import__("io").BytesIO(b"PK" + data[2:]), weights_only=True)
    assert list(payload) == ["weight", "config", "info"] and payload["info"] == info
    assert list(payload["weight"]) == [k for k in model_keys if "enc_q" not in k]
    assert {v.dtype for v in payload["weight"].values()} == {torch.float16}
    config = payload["config"]
    assert type(config) is dict and config["model"]["version"] == version
    for key in ("filter_length", "hop_length", "sampling_rate", "win_length", "n_speakers"):
        assert key in config["data"]
    assert config["train"]["segment_size"] == 20480


def test_train_save_export_and_synthesize(tmp_path):
    from tts.pipeline import TTSPipeline
    from voice_helpers import TINY_BERT, TINY_HUBERT, write_tiny_gpt

    s = settings_for(tmp_path, seconds=(1.2, 1.3), epochs=2, save_every_epochs=4, keep_latest=1)
    steps = []
    result = train_sovits(s, on_step=lambda step, scalars: steps.append(scalars))
    assert result.global_step == len(steps) == 2 and result.epochs_done == 2
    assert all(np.isfinite(v) for scalars in steps for v in scalars.values())
    # save_every 4 > epochs: only the final save (upstream would write nothing); keep_latest 1
    assert sorted(p.name for p in s.checkpoint_dir.glob("*.pth")) == ["D_2.pth", "G_2.pth"]
    assert [p.name for p in result.weights] == ["aria_e2_s2.pth"]
    assert result.weights[0].parent == tmp_path / "logs" / "SoVITS_weights_v2"
    assert list((s.checkpoint_dir / "tensorboard").glob("events.out.tfevents.*"))
    g_keys = list(torch.load(s.checkpoint_dir / "G_2.pth", weights_only=True)["model"])
    _check_export_format(result.weights[0], "v2", g_keys, "2epoch_2iteration")

    # the same file from the full checkpoint (`koe voice export --stage sovits`)
    again = export_sovits_checkpoint(s.checkpoint_dir / "G_2.pth", tmp_path / "again", "aria")
    a, b = read_sovits(again), read_sovits(result.weights[0])
    assert again.name == "aria_e2_s2.pth" and a.weights.keys() == b.weights.keys()
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)

    reference = tmp_path / "ref.wav"
    soundfile.write(reference, tone(4.0, 7), 32000)
    pipeline = TTSPipeline.from_paths(
        write_tiny_gpt(tmp_path / "s1.ckpt"), result.weights[0], TINY_BERT, TINY_HUBERT
    )
    params = {"text": "Hello there.", "text_lang": "en", "ref_audio_path": str(reference),
              "prompt_text": "Hello world.", "prompt_lang": "en", "seed": 1}  # fmt: skip
    pieces = list(pipeline.run(params))
    assert pieces and pieces[0][0] == 32000 and sum(len(a) for _, a in pieces) > 0


@pytest.mark.parametrize("version", ["v2Pro", "v2ProPlus"])
def test_pro_exports_carry_the_version_header(tmp_path, version):
    s = settings_for(tmp_path, version, batch_size=4)
    result = train_sovits(s)
    g_keys = list(torch.load(s.checkpoint_dir / "G_1.pth", weights_only=True)["model"])
    _check_export_format(result.weights[0], version, g_keys, "1epoch_1iteration")
    model = load_sovits(result.weights[0])
    assert model.config.version == version and hasattr(model, "sv_emb")


def test_full_size_v2_export_has_the_official_keys_and_shapes(tmp_path):
    from training.export import export_sovits
    from training.sovits_train import official_config

    config = official_config("v2")
    with torch.device("meta"):
        model = SynthesizerTrn(config_from_file(config, "v2"), weight_norm=True, posterior=True)
    model = model.to_empty(device="cpu")  # values do not matter here, only the layout
    path = export_sovits(model.state_dict(), config, 8, 96, tmp_path, "aria")
    assert path.name == "aria_e8_s96.pth"
    expected = json.loads(SPEC_KEYS.read_text())["sovits_v2"]
    weights = torch.load(path, weights_only=True)["weight"]
    assert [(k, list(v.shape)) for k, v in weights.items()] == list(expected.items())
    assert len(weights) == 673


def _isolated_config(folder: Path) -> str:
    """An empty config file, so the CLI never reads the working directory's config.toml."""
    path = folder / "koe.toml"
    path.write_text("", encoding="utf-8")
    return str(path)


def _train_argv(s: SoVITSTrainSettings, epochs: int) -> list[str]:
    return [
        "voice", "train-sovits", "--config", _isolated_config(s.exp_dir.parent.parent), "--name", s.exp_dir.name, "--exp-dir", str(s.exp_dir.parent),
        "--pretrained-g", str(s.pretrained_g), "--pretrained-d", str(s.pretrained_d), "--batch-size", "1",
        "--epochs", str(epochs), "--save-every", "1", "--repeat-below", "0", "--workers", "0",
        "--log-every", "1", "--device", "cpu",
    ]  # fmt: skip


def _cli_in_child(argv: list[str], stderr_path: Path) -> None:
    from agent.cli import main

    with open(stderr_path, "w") as stderr:
        os.dup2(stderr.fileno(), 2)
        code = 1
        try:
            code = main(argv)
        finally:
            os._exit(code)


def test_sigkill_mid_epoch_resumes_from_the_last_checkpoint(tmp_path, capsys):
    """`koe voice train-sovits` killed with SIGKILL in epoch 2, then run again: it continues from epoch 1's
    checkpoint and ends with the step count of an uninterrupted run. The killed run is a forked process
    (torch already imported: no start-up cost), the resumed one runs in this process."""
    from agent.cli import main

    s = settings_for(tmp_path, seconds=(1.2, 1.3, 1.4))
    steps_per_epoch = 3  # 3 clips, batch size 1, one bucket
    log_file = s.exp_dir / "train.log"
    stderr_path = tmp_path / "killed_run.stderr"
    process = multiprocessing.get_context("fork").Process(
        target=_cli_in_child, args=(_train_argv(s, 2), stderr_path)
    )
    process.start()
    deadline = time.monotonic() + 120
    try:
        while f"epoch 2 step {steps_per_epoch + 2}:" not in (
            log_file.read_text() if log_file.exists() else ""
        ):
            assert process.is_alive(), (
                f"stopped early ({process.exitcode}): {stderr_path.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "training did not reach epoch 2"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.join()
    assert process.exitcode == -signal.SIGKILL
    names = sorted(p.name for p in s.checkpoint_dir.iterdir() if p.is_file())
    assert names == ["D_3.pth", "G_3.pth"]  # epoch 1 only; nothing half-written left behind
    assert load_checkpoint(s.checkpoint_dir / "G_3.pth")["global_step"] == steps_per_epoch
    assert load_checkpoint(s.checkpoint_dir / "D_3.pth")["iteration"] == 1

    capsys.readouterr()
    assert main(_train_argv(s, 2) + ["--keep-latest", "1"]) == 0
    assert "SoVITS: 2 epochs, 6 steps" in capsys.readouterr().out  # as if never interrupted
    assert f"resuming from {s.checkpoint_dir / 'G_3.pth'}: epoch 1 done, step 3" in log_file.read_text()
    assert sorted(p.name for p in s.checkpoint_dir.glob("*.pth")) == ["D_6.pth", "G_6.pth"]  # keep-latest 1
    final = load_checkpoint(s.checkpoint_dir / "G_6.pth")
    assert (final["iteration"], final["global_step"]) == (2, 6)
    weights = sorted(p.name for p in (tmp_path / "logs" / "SoVITS_weights_v2").iterdir())
    assert weights == ["aria_e1_s3.pth", "aria_e2_s6.pth"]
    assert read_sovits(tmp_path / "logs" / "SoVITS_weights_v2" / "aria_e2_s6.pth").info == "2epoch_6iteration"


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from agent.cli import main

    g, d = tiny_pretrained(tmp_path / "pretrained", "v2")
    (tmp_path / "logs" / "empty").mkdir(parents=True)
    base = [
        "voice",
        "train-sovits",
        "--config",
        _isolated_config(tmp_path),
        "--exp-dir",
        str(tmp_path / "logs"),
        "--pretrained-g",
        str(g),
        "--device",
        "cpu",
    ]
    assert main([*base, "--name", "empty", "--pretrained-d", str(d)]) == 2
    assert "2-name2text.txt not found: run `koe voice prepare`" in capsys.readouterr().err
    assert main([*base, "--name", "empty", "--pretrained-d", str(g)]) == 2  # a generator passed as D
    assert "is not a SoVITS discriminator" in capsys.readouterr().err
    assert main([*base, "--name", "empty", "--pretrained-d", str(d), "--version", "v2Pro"]) == 2
    assert "is a SoVITS v2 model, but version v2Pro was asked for" in capsys.readouterr().err
