"""`koe voice train-gpt` / `export --stage gpt`: the official GPT fine-tune on tiny models, crash-safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agent.cli import main
from agent.errors import KoeError
from training.checkpoints import latest_checkpoint, load_checkpoint, prune
from training.gpt_train import (
    CHECKPOINT_PATTERN,
    GPTTrainingModule,
    GPTTrainOptions,
    collate,
    epoch_batches,
    epoch_order,
    is_step_batch,
    largest_fitting_batch_size,
    load_gpt_items,
    loader_batch_size,
    official_lr,
    out_of_memory_error,
    steps_in_epoch,
    train_gpt,
)
from training.scaled_adam import ScaledAdam
from tts.models.t2s import T2SConfig, T2SModel
from tts.weights import save_atomic
from voice_helpers import ROOT, TINY_BERT, TINY_HUBERT, copy_experiment, prepared_experiment

EXPORT_KEYS = json.loads((ROOT.parent / "shared" / "spec" / "gpt-sovits-export-keys.json").read_text())


def _tiny_model(seed: int = 0) -> T2SModel:
    torch.manual_seed(seed)
    return T2SModel(T2SConfig(dim=32, num_heads=2, num_layers=2))


def _random_batch(lengths: list[tuple[int, int]], seed: int = 1) -> dict[str, torch.Tensor]:
    from training.gpt_train import GPTItem

    g = torch.Generator().manual_seed(seed)
    items = [
        GPTItem(
            f"i{i}",
            torch.randint(0, 732, (nx,), generator=g),
            torch.randint(0, 1024, (ny,), generator=g),
            torch.randn(1024, nx, generator=g) if i % 2 else None,
        )
        for i, (nx, ny) in enumerate(lengths)
    ]
    return collate(items, eos=1024)


# --- loss -------------------------------------------------------------------------------------------


def test_consistent_loss_equals_official_at_batch_size_1_and_ignores_padding():
    model = _tiny_model().eval()
    module = GPTTrainingModule(model)
    lengths = [(7, 12), (4, 5), (9, 8)]
    batch = _random_batch(lengths)
    with torch.no_grad():
        single = [module(**_row(batch, i)) for i in range(3)]
        official = [model.forward_train(**_row(batch, i)) for i in range(3)]
        together = module(**batch)
        official_together = model.forward_train(**batch)
    for ours, theirs in zip(single, official):
        torch.testing.assert_close(ours.loss_sum, theirs.loss_sum)
    # padding changes nothing: the batch loss is the sum of the items' losses plus EOS predictions at
    # padded code positions, the same in both; the official left-pad mask changes real positions.
    padded_eos = together.loss_sum - sum(s.loss_sum for s in single)
    assert padded_eos > 0
    official_gap = official_together.loss_sum - sum(s.loss_sum for s in official)
    assert not torch.isclose(padded_eos, official_gap, rtol=1e-4)


def _row(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    nx, ny = int(batch["phoneme_lens"][i]), int(batch["semantic_lens"][i])
    return {
        "phoneme_ids": batch["phoneme_ids"][i : i + 1, :nx],
        "phoneme_lens": batch["phoneme_lens"][i : i + 1],
        "semantic_ids": batch["semantic_ids"][i : i + 1, :ny],
        "semantic_lens": batch["semantic_lens"][i : i + 1],
        "bert_feature": batch["bert_feature"][i : i + 1, :, :nx],
    }


def test_padded_items_get_the_same_logits_as_alone():
    model = _tiny_model().eval()
    module = GPTTrainingModule(model)
    batch = _random_batch([(9, 10), (5, 6)])
    captured = {}
    model.ar_predict_layer.register_forward_hook(lambda m, i, o: captured.setdefault("logits", []).append(o))
    with torch.no_grad():
        module(**batch)
        module(**_row(batch, 1))
    together, alone = captured["logits"]
    torch.testing.assert_close(together[1, :7], alone[0], rtol=1e-4, atol=1e-4)


def test_loss_goes_down_on_a_fixed_batch():
    module = GPTTrainingModule(_tiny_model()).train()
    optimizer = ScaledAdam(module.parameters(), lr=0.01, betas=(0.9, 0.95))
    batch = _random_batch([(6, 10), (5, 8), (8, 12), (4, 7)])
    losses = []
    for step in range(20):
        for group in optimizer.param_groups:
            group["lr"] = official_lr(step)
        out = module(**batch)
        out.loss_sum.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out.loss_sum.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    # ScaledAdam moves each tensor by ~lr x its RMS per step: slow but steady
    assert losses[-1] < 0.95 * losses[0] and max(losses[10:]) < losses[0]


# --- optimiser and schedule -------------------------------------------------------------------------


def test_scaled_adam_first_step_moves_by_the_tensor_rms():
    weight = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    alpha = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = ScaledAdam([weight, alpha], lr=0.01)
    weight.grad = torch.tensor([[0.3, -0.1], [0.0, 2.0]])
    alpha.grad = torch.tensor([-4.0])
    before = weight.detach().clone()
    rms = before.pow(2).mean().sqrt()
    optimizer.step()
    # step 1: bias-corrected second moment = grad^2, so each entry moves by lr * (1 - beta1) * rms * sign(grad)
    expected = before - 0.01 * 0.1 * rms * torch.sign(weight.grad) * (
        weight.grad.abs() / (weight.grad.abs() + 1e-8)
    )
    torch.testing.assert_close(weight.detach(), expected)
    torch.testing.assert_close(alpha.detach(), torch.tensor([1.0 + 0.01 * 0.1 * 0.1]))  # scalars: lr x 0.1
    big = torch.nn.Parameter(torch.tensor([50.0]))
    big.grad = torch.tensor([0.0])
    ScaledAdam([big], lr=0.01).step()
    assert float(big.detach()) == 10.0  # scalars are clamped to +-10 before the update


def test_official_accumulation_and_learning_rate():
    assert [i for i in range(13) if is_step_batch(i)] == [4, 8, 12]
    assert steps_in_epoch(4) == 0 and steps_in_epoch(5) == 1 and steps_in_epoch(13) == 3
    assert [official_lr(s) for s in range(3)] == [0.01, 0.002, 0.002]
    assert loader_batch_size(8, 98) == 8 and loader_batch_size(40, 100) == 25 and loader_batch_size(4, 3) == 1


def test_bucket_order_is_seeded_by_epoch_and_shards_ranks():
    seconds = [0.5 + 0.37 * (i % 17) for i in range(40)]
    first, again, other = epoch_order(seconds, 4, 0), epoch_order(seconds, 4, 0), epoch_order(seconds, 4, 1)
    assert first == again and first != other and sorted(first) == list(range(40))
    for start in range(0, 40, 4):  # a batch holds items of at most two neighbouring 2 s buckets
        buckets = {int(seconds[i] // 2) for i in first[start : start + 4]}
        assert max(buckets) - min(buckets) <= 1
    ranks = [epoch_order(seconds[:39], 4, 3, rank, 2) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 20 and set(ranks[0] + ranks[1]) == set(range(39))


def test_dataset_filters_like_the_official_loader(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    rows = {
        "ok.wav": ("AH0 B K", 25),  # 3 phones in 1 s: kept (rate 3)
        "slow.wav": ("AH0 B", 25),  # 2 phones per second: dropped
        "fast.wav": (" ".join(["AH0"] * 26), 25),  # 26 per second: dropped
        "long.wav": ("AH0 " * 1400, 1351),  # over 54 s of tokens
        "odd.wav": ("AH0 NOPE B", 25),
    }
    (exp / "2-name2text.txt").write_text(
        "".join(f"{n}\t{p.strip()}\tNone\tx\n" for n, (p, _) in rows.items()), encoding="utf-8"
    )
    semantic = "item_name\tsemantic_audio\n" + "".join(
        f"{n}\t{' '.join(['5'] * t)}\n" for n, (_, t) in rows.items()
    )
    (exp / "6-name2semantic.tsv").write_text(semantic + "lost.wav\t1 2 3\n", encoding="utf-8")
    items, report = load_gpt_items(exp, "v2")
    assert report.kept == 1 and report.repeats == 100 and len(items) == 100
    reasons = dict(report.dropped)
    assert set(reasons) == {"slow.wav", "fast.wav", "long.wav", "odd.wav", "lost.wav"}
    assert "NOPE" in reasons["odd.wav"] and "1351 tokens" in reasons["long.wav"]
    (exp / "6-name2semantic.tsv").write_text(
        "item_name\tsemantic_audio\nslow.wav\t" + " ".join(["1"] * 25) + "\n", encoding="utf-8"
    )
    with pytest.raises(KoeError, match="no clip of .* can train the GPT"):
        load_gpt_items(exp, "v2")


def test_out_of_memory_suggests_a_batch_size_that_fits():
    tried = []

    def try_batch(n: int) -> None:
        tried.append(n)
        if n > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert largest_fitting_batch_size(try_batch, 16) == 2 and tried == [8, 4, 2]
    message = str(out_of_memory_error(2, 16, torch.device("cuda", 0)))
    assert "batch size 2 fits" in message and "--batch-size 2" in message
    assert "even at batch size 1" in str(out_of_memory_error(None, 1, torch.device("cuda", 0)))


def test_checkpoint_helpers(tmp_path):
    for epoch, step in ((0, 3), (1, 6), (9, 30), (10, 33)):
        save_atomic({"epoch": epoch}, tmp_path / f"epoch={epoch}-step={step}.ckpt")
    (tmp_path / ".partial-stale.ckpt").write_bytes(b"half")
    assert latest_checkpoint(tmp_path, CHECKPOINT_PATTERN).name == "epoch=10-step=33.ckpt"  # numeric order
    prune(tmp_path, CHECKPOINT_PATTERN, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=10-step=33.ckpt", "epoch=9-step=30.ckpt"]
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(KoeError, match="cannot read training checkpoint .*bad.ckpt"):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_full_size_export_matches_the_official_key_list(tmp_path):
    from training.export import export_gpt
    from training.gpt_train import training_config

    torch.manual_seed(0)
    model = T2SModel(T2SConfig())  # the official v2 size: 295 entries
    options = GPTTrainOptions(tmp_path / "runs" / "big", "big", "v2", tmp_path / "s1.ckpt")
    config = training_config(options, model, "32")
    state = {"state_dict": GPTTrainingModule(model.half()).state_dict(), "config": config, "epoch": 3}
    save_atomic(state, tmp_path / "epoch=2-step=9.ckpt")
    del state
    path = export_gpt(tmp_path / "epoch=2-step=9.ckpt", tmp_path / "GPT_weights_v2", "big")
    assert path.name == "big-e3.ckpt"
    exported = torch.load(path, map_location="cpu", weights_only=True)
    official = EXPORT_KEYS["gpt_s1longer_v2"]
    assert list(exported["weight"]) == list(official)  # names and registration order
    assert {k: list(v.shape) for k, v in exported["weight"].items()} == {
        k: list(v) for k, v in official.items()
    }
    assert {v.dtype for v in exported["weight"].values()} == {torch.float16}
    assert exported["info"] == "GPT-e3" and exported["config"]["model"]["n_layer"] == 24


# --- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared():
    return prepared_experiment("v2")


def _train_flags(exp_dir: Path, pretrained: Path, epochs: int) -> list[str]:
    return [
        "--name", exp_dir.name, "--version", "v2", "--exp-dir", str(exp_dir.parent), "--pretrained",
        str(pretrained), "--batch-size", "8", "--epochs", str(epochs), "--save-every", "1", "--keep-latest",
        "2", "--device", "cpu",
    ]  # fmt: skip


def test_train_export_and_synthesize(prepared, tmp_path, capsys):
    from tts.pipeline import TTSPipeline
    from tts.weights.gpt import load_gpt

    exp = copy_experiment(prepared, tmp_path)
    assert main(["voice", "train-gpt", *_train_flags(exp, prepared.pretrained.gpt, 2)]) == 0
    out = capsys.readouterr().out
    assert "GPT: 2 epochs, 6 steps" in out  # 98 items / 8 = 13 batches: steps on batches 4, 8, 12
    weights_dir = exp.parent / "GPT_weights_v2"
    assert sorted(p.name for p in weights_dir.iterdir()) == ["aria-e1.ckpt", "aria-e2.ckpt"]
    ckpts = sorted(p.name for p in (exp / "logs_s1_v2" / "ckpt").iterdir())
    assert ckpts == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]
    assert any((exp / "logs_s1_v2" / "tensorboard").glob("events.out.tfevents.*"))

    # official small-weight format (spec 8.2): weight / config / info, fp16 `model.*` keys, plain dict config
    saved = torch.load(weights_dir / "aria-e2.ckpt", map_location="cpu", weights_only=True)
    assert list(saved) == ["weight", "config", "info"] and saved["info"] == "GPT-e2"
    expected_keys = ["model." + k for k in _tiny_model().state_dict()]
    assert list(saved["weight"]) == expected_keys
    assert {v.dtype for v in saved["weight"].values()} == {torch.float16}
    assert saved["config"]["data"]["max_sec"] == 54 and saved["config"]["train"]["exp_name"] == "aria"
    assert set(saved["config"]) >= {
        "train",
        "optimizer",
        "data",
        "model",
        "inference",
        "pretrained_s1",
        "output_dir",
    }

    # export from the newest full checkpoint gives the same tensors as the training-time weights
    assert main(["voice", "export", "--name", "aria", "--version", "v2", "--exp-dir", str(exp.parent),
                 "--stage", "gpt", "-o", str(tmp_path / "exported")]) == 0  # fmt: skip
    exported = torch.load(tmp_path / "exported" / "aria-e2.ckpt", map_location="cpu", weights_only=True)
    assert exported["info"] == "GPT-e2" and exported["config"] == saved["config"]
    for key, value in saved["weight"].items():
        assert torch.equal(exported["weight"][key], value), key
    trained = load_gpt(weights_dir / "aria-e2.ckpt").model
    pretrained = load_gpt(prepared.pretrained.gpt).model
    assert not torch.equal(trained.bert_proj.weight, pretrained.bert_proj.weight)

    pipeline = TTSPipeline.from_paths(
        weights_dir / "aria-e2.ckpt", prepared.pretrained.sovits, TINY_BERT, TINY_HUBERT
    )
    clip = prepared.dataset.clips[1]
    params = {
        "text": "Good morning.", "text_lang": "en", "ref_audio_path": str(clip),
        "prompt_text": prepared.dataset.texts[1], "prompt_lang": "en", "seed": 1, "top_k": 5,
    }  # fmt: skip
    rate, audio = next(iter(pipeline.run(params)))
    assert rate == 32000 and len(audio) > 0


def test_sigkill_mid_epoch_then_resume(prepared, tmp_path):
    exp = copy_experiment(prepared, tmp_path)
    ckpt_dir = exp / "logs_s1_v2" / "ckpt"
    epochs = 4
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "agent.cli",
        "voice",
        "train-gpt",
        *_train_flags(exp, prepared.pretrained.gpt, epochs),
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while latest_checkpoint(ckpt_dir, CHECKPOINT_PATTERN) is None:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)  # the second epoch (or the weights export) is under way
    finally:
        process.wait()
    survivor = latest_checkpoint(ckpt_dir, CHECKPOINT_PATTERN)
    state = load_checkpoint(survivor)  # complete and readable: no torn write
    assert state["epoch"] < epochs
    assert all(not p.name.startswith(".") or p.name.startswith(".partial-") for p in ckpt_dir.iterdir())
    for weights in (exp.parent / "GPT_weights_v2").glob("*.ckpt"):
        torch.load(weights, weights_only=True)  # every small weight present is complete too

    options = GPTTrainOptions(exp, "aria", "v2", prepared.pretrained.gpt, batch_size=8, epochs=epochs, save_every=1,
                              keep_latest=2, device="cpu")  # fmt: skip
    result = train_gpt(options)
    items, _ = load_gpt_items(exp, "v2")
    per_epoch = steps_in_epoch(len(epoch_batches(items, 8, 0)))
    assert result.resumed_from == survivor
    assert result.global_step == epochs * per_epoch
    assert state["global_step"] == state["epoch"] * per_epoch
    assert (
        latest_checkpoint(ckpt_dir, CHECKPOINT_PATTERN).name
        == f"epoch={epochs - 1}-step={epochs * per_epoch}.ckpt"
    )
    assert not any(p.name.startswith(".partial-") for p in ckpt_dir.iterdir())


@pytest.mark.slow
def test_torchrun_ranks_share_each_epoch(prepared, tmp_path):
    """The multi-GPU path, on CPU: torchrun starts two ranks (gloo); each trains its shard of every epoch
    under DistributedDataParallel, rank 0 alone reports and saves."""
    exp = copy_experiment(prepared, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--nproc-per-node", "2", "-m", "agent.cli", "voice", "train-gpt",
               *_train_flags(exp, prepared.pretrained.gpt, 1)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    items, _ = load_gpt_items(exp, "v2")
    sharded = steps_in_epoch(len(epoch_batches(items, 8, 0, rank=0, world_size=2)))
    assert 0 < sharded < steps_in_epoch(len(epoch_batches(items, 8, 0)))  # half the batches per rank
    assert result.stdout.count("GPT: ") == 1 and f"GPT: 1 epochs, {sharded} steps" in result.stdout
    assert [p.name for p in (exp / "logs_s1_v2" / "ckpt").iterdir()] == [f"epoch=0-step={sharded}.ckpt"]
    torch.load(exp.parent / "GPT_weights_v2" / "aria-e1.ckpt", weights_only=True)


def test_train_command_user_mistakes(tmp_path, capsys):
    flags = [
        "--name",
        "nobody",
        "--exp-dir",
        str(tmp_path),
        "--pretrained",
        str(tmp_path / "x.ckpt"),
        "--device",
        "cpu",
    ]
    assert main(["voice", "train-gpt", *flags]) == 2
    assert "run `koe voice prepare`" in capsys.readouterr().err
    assert main(["voice", "train-gpt", *flags, "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
    assert main(["voice", "export", "--name", "nobody", "--exp-dir", str(tmp_path)]) == 2
    assert "no GPT training checkpoint" in capsys.readouterr().err
