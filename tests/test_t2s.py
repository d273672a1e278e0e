"""T2S model, sampling, decoding loops and GPT weight files (beyond the numerical parity cases)."""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from agent.errors import KoeError
from tts.models.sampling import SamplingParams, exponential_race, logits_to_probs, top_k_filter, top_p_filter
from tts.models.t2s import T2SConfig, T2SModel, prefill_mask
from tts.models.t2s_decode import SingleDecoder, _silence_split, generate, generate_batch, stream
from tts.weights.gpt import load_gpt, read_gpt_file, save_gpt

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT.parent / "shared" / "spec" / "manifests"
FIXTURES = ROOT.parent / "shared" / "fixtures" / "parity"
GREEDY = SamplingParams(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
SMALL = T2SConfig(phoneme_vocab_size=732, dim=32, num_heads=2, num_layers=2)


def small_model(seed: int = 0) -> T2SModel:
    torch.manual_seed(seed)
    model = T2SModel(SMALL).eval()
    with torch.no_grad():  # make the output layer decisive and EOS reachable, as in the fixtures
        model.ar_predict_layer.weight.mul_(6)
        model.ar_predict_layer.weight[SMALL.eos].mul_(3)
    return model


def text_inputs(length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 732, (1, length), generator=g), torch.randn(1, 1024, length, generator=g)


# --- architecture vs the official manifests ---------------------------------------------------------


@pytest.mark.skipif(not MANIFESTS.is_dir(), reason="shared/spec manifests not found beside the repo")
@pytest.mark.parametrize("name", ["t2s_v1", "t2s_v2"])
def test_full_size_state_dict_matches_manifest(name):
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    config = T2SConfig.from_checkpoint_config({"model": manifest["config"], "data": {"max_sec": 54}})
    model = T2SModel(config)  # ~2 s on one thread (a meta-device build pays a one-off ~7 s in torch)
    ours = {
        "model." + k: (list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    }
    theirs = {k: (v["shape"], v["dtype"]) for k, v in manifest["state_dict"].items()}
    assert list(ours) == list(theirs)  # same keys in the same order (the exporter's order)
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]


def test_config_errors_name_the_problem():
    with pytest.raises(KoeError, match="lacks .*'n_layer'"):
        T2SConfig.from_checkpoint_config({"model": {"vocab_size": 1025, "phoneme_vocab_size": 732}})
    with pytest.raises(KoeError, match="no 'model' section"):
        T2SConfig.from_checkpoint_config({"data": {}})


def test_training_forward_trains_every_parameter():
    model = small_model().train()
    ids, bert = text_inputs(6)
    semantic = torch.randint(0, 1024, (2, 5))
    out = model.forward_train(
        ids.repeat(2, 1), torch.tensor([6, 4]), semantic, torch.tensor([5, 3]), bert.repeat(2, 1, 1)
    )
    assert out.logits.shape == (2, 6, SMALL.vocab_size)
    assert out.targets[1].tolist() == semantic[1, :3].tolist() + [SMALL.eos] * 3
    assert out.decoder_input[1, 3:].tolist() == [SMALL.eos] * 2
    out.loss_sum.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --- KV cache -------------------------------------------------------------------------------------


def test_cached_decode_matches_full_recompute():
    model = small_model()
    ids, bert = text_inputs(7)
    audio = torch.randint(0, 1024, (1, 9))
    with torch.no_grad():
        text = model.embed_text(ids, bert)
        cache = model.new_cache(1, 7 + 9)
        stepped = [
            model.prefill(torch.cat([text, model.embed_audio(audio[:, :4])], 1), prefill_mask(7, 4), cache)
        ]
        for j in range(4, 9):
            stepped.append(model.decode_step(model.embed_audio(audio[:, j : j + 1], start=j), cache))
        full = torch.cat([text, model.embed_audio(audio)], 1)
        hidden = model.h(full, prefill_mask(7, 9))
        reference = model.ar_predict_layer(hidden[:, 7 + 3 :])  # positions of the last prompt token onwards
    torch.testing.assert_close(torch.cat(stepped), reference[0], atol=1e-5, rtol=1e-5)
    assert cache.length == 16


# --- sampling -------------------------------------------------------------------------------------


def test_top_p_removes_the_token_that_crosses_the_threshold():
    logits = torch.tensor([[0.474, 0.288, 0.174, 0.064]]).log()
    kept = torch.isfinite(top_p_filter(logits, 0.6))
    assert kept.tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, True, False, False]]


def test_top_k_keeps_ties_and_clips_k():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    assert torch.isfinite(top_k_filter(logits, 1)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(top_k_filter(logits, 10)).all()


def test_repetition_penalty_is_applied_in_place_over_history():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    probs = logits_to_probs(
        logits, torch.tensor([[0, 1, 1]]), SamplingParams(top_k=4, repetition_penalty=2.0)
    )
    assert logits.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    torch.testing.assert_close(probs, torch.softmax(logits, -1))


def test_exponential_race_uses_one_draw_of_the_probs_shape():
    probs = torch.softmax(torch.randn(2, 7), -1)
    torch.manual_seed(3)
    tokens, noise = exponential_race(probs)
    torch.manual_seed(3)
    expected = torch.empty(2, 7).exponential_(1)
    assert torch.equal(noise, expected)
    assert torch.equal(tokens, torch.argmax(probs / expected, -1))


def test_bad_sampling_params_are_rejected():
    with pytest.raises(KoeError, match="top_k must be >= 1"):
        SamplingParams(top_k=0)
    with pytest.raises(KoeError, match="top_p"):
        SamplingParams(top_p=0.0)


# --- decoding loops -------------------------------------------------------------------------------


def test_no_eos_before_step_11_and_early_stop_trimming():
    model = small_model()
    ids, bert = text_inputs(10)
    prompt = torch.randint(0, 1024, (1, 6))
    naive = generate(model, ids, bert, prompt, GREEDY, early_stop_num=12)
    [batch] = generate_batch(model, [ids[0]], [bert[0]], prompt, GREEDY, early_stop_num=12)
    if naive.eos_hit:
        pytest.skip("this random model stops by EOS before the early stop")
    assert naive.num_steps == 13 and naive.idx == 12
    assert len(naive.sequence) == 6 + 13 and len(batch.sequence) == 6 + 12
    assert torch.equal(naive.sequence[:-1], batch.sequence)  # same tokens, different trimming
    assert torch.equal(naive.semantic_tokens, naive.sequence[-12:])


def test_eos_stop_drops_the_stop_token_and_step_cap_holds():
    model = small_model()
    ids, bert = text_inputs(10)
    prompt = torch.randint(0, 1024, (1, 6))
    result = generate(model, ids, bert, prompt, GREEDY, early_stop_num=-1, max_steps=200)
    assert result.num_steps >= 11
    if result.eos_hit:
        assert len(result.sequence) == 6 + result.idx and SMALL.eos not in result.sequence.tolist()
    else:
        assert result.num_steps == 200


def test_batch_with_padding_matches_items_decoded_alone():
    model = small_model()
    prompt = torch.randint(0, 1024, (1, 5))
    items = [text_inputs(n, seed=n) for n in (12, 8, 10)]
    batch = generate_batch(model, [i[0][0] for i in items], [b[0] for _, b in items], prompt, GREEDY, 30)
    for (ids, bert), together in zip(items, batch):
        [alone] = generate_batch(model, [ids[0]], [bert[0]], prompt, GREEDY, 30)
        assert torch.equal(together.sequence, alone.sequence)
        assert together.idx == alone.idx


def test_sampled_naive_and_batch_paths_agree_for_one_item():
    model = small_model()
    ids, bert = text_inputs(10)
    prompt = torch.randint(0, 1024, (1, 6))
    params = SamplingParams(top_k=5, top_p=0.8, temperature=0.7, repetition_penalty=1.35)
    torch.manual_seed(2)
    naive = generate(model, ids, bert, prompt, params, early_stop_num=-1, max_steps=80)
    torch.manual_seed(2)
    [batch] = generate_batch(model, [ids[0]], [bert[0]], prompt, params, early_stop_num=-1, max_steps=80)
    assert naive.num_steps == batch.num_steps
    expected = naive.sequence if naive.eos_hit else naive.sequence[:-1]
    assert torch.equal(batch.sequence, expected)


def test_reference_free_returns_whole_sequence():
    model = small_model()
    ids, bert = text_inputs(8)
    result = generate(model, ids, bert, None, GREEDY, early_stop_num=20)
    assert result.idx == 0 and result.prompt_len == 0
    assert torch.equal(result.semantic_tokens, result.sequence)
    [batch] = generate_batch(model, [ids[0]], [bert[0]], None, GREEDY, 20)  # falls back to the naive path
    assert torch.equal(batch.sequence, result.sequence)


def _whole_and_streamed(**stream_options):
    """The same seeded sampled generation, once whole and once streamed: (generated tokens, chunks)."""
    model = small_model()
    ids, bert = text_inputs(9)
    prompt = torch.randint(0, 1024, (1, 4))
    params = SamplingParams(top_k=5, top_p=0.9, temperature=0.8)
    torch.manual_seed(5)
    whole = generate(model, ids, bert, prompt, params, early_stop_num=-1, max_steps=60)
    torch.manual_seed(5)
    chunks = list(stream(model, ids, bert, prompt, params, early_stop_num=-1, max_steps=60, **stream_options))
    streamed = torch.cat([c.tokens for c in chunks if c.tokens is not None])
    assert torch.equal(streamed, whole.sequence[4:])
    return chunks


def test_fixed_chunk_stream_yields_the_same_tokens():
    chunks = _whole_and_streamed(chunk_length=8)
    assert [c.is_final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(len(c.tokens) == 8 for c in chunks[:-1])


def test_a_shorter_first_chunk_then_the_usual_ones():
    sizes = [len(c.tokens) for c in _whole_and_streamed(chunk_length=4, first_chunk_length=3)[:-1]]
    assert len(sizes) >= 3 and sizes == [3] + [4] * (len(sizes) - 1)


def test_stream_can_be_cancelled_between_steps():
    model = small_model()
    ids, bert = text_inputs(9)
    generator = stream(model, ids, bert, torch.randint(0, 1024, (1, 4)), GREEDY, chunk_length=4, max_steps=60)
    first = next(generator)
    generator.close()
    assert len(first.tokens) == 4 and not first.is_final


def test_silence_split_rule():
    similarity = torch.zeros(1025)
    similarity[7] = 0.9  # a mute-like token
    pending = torch.tensor([1, 2, 3, 7, 7, 4])
    similarity[[1, 2, 3, 4]] = -0.5
    assert _silence_split(similarity, pending, 0.0, 3) == 4  # pair (7, 7) is the best split, after 4 tokens
    assert _silence_split(similarity, pending, 0.0, 5) is None  # split point too early


def test_decoder_refuses_to_run_past_the_end():
    model = small_model()
    ids, bert = text_inputs(5)
    decoder = SingleDecoder(model, ids, bert, torch.zeros(1, 2, dtype=torch.long), GREEDY, early_stop_num=0)
    assert decoder.advance()
    with pytest.raises(RuntimeError, match="finished"):
        decoder.advance()


def test_mismatched_bert_length_is_an_error():
    ids, bert = text_inputs(5)
    with pytest.raises(KoeError, match="same length"):
        generate(small_model(), ids, bert[:, :, :4], None, GREEDY)


# --- weight files ---------------------------------------------------------------------------------


def _pickle_globals(path: Path) -> tuple[int, set[str]]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    out = io.StringIO()
    pickletools.dis(data, out)
    names = {
        line.split("GLOBAL")[1].strip().strip("'") for line in out.getvalue().splitlines() if "GLOBAL" in line
    }
    return data[1], names


def _layout(path: Path) -> dict:
    raw = torch.load(path, weights_only=True)
    return {
        "top": list(raw),
        "weight": [(k, tuple(v.shape), v.dtype) for k, v in raw["weight"].items()],
        "config": raw["config"],
        "info": raw["info"],
        "head": path.read_bytes()[:2],
        "pickle": _pickle_globals(path),
    }


def test_round_trip_is_identical(tmp_path):
    model = small_model()
    first = tmp_path / "voice-e3.ckpt"
    save_gpt(first, model, info="GPT-e3")
    loaded = load_gpt(first)
    assert loaded.info == "GPT-e3" and loaded.model.config == SMALL
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value.half().float()), name
    second = tmp_path / "again.ckpt"
    save_gpt(second, loaded.model, loaded.config, loaded.info)
    assert _layout(first) == _layout(second)
    assert _layout(first)["pickle"] == (
        2,
        {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch HalfStorage"},
    )
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.skipif(not (FIXTURES / "t2s_v2.ckpt").is_file(), reason="parity fixtures not present")
def test_official_file_reads_and_rewrites_in_the_same_layout(tmp_path):
    official = FIXTURES / "t2s_v2.ckpt"
    loaded = load_gpt(official, dtype=torch.float64)
    assert loaded.info == "GPT-e15" and loaded.config["data"]["max_sec"] == 54
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float64}
    ours = tmp_path / "copy.ckpt"
    save_gpt(ours, loaded.model, loaded.config, loaded.info)
    assert _layout(ours) == _layout(official)
    raw_ours, raw_official = torch.load(ours, weights_only=True), torch.load(official, weights_only=True)
    assert all(torch.equal(raw_ours["weight"][k], v) for k, v in raw_official["weight"].items())


def _write(path: Path, weight: dict, config: dict | None = None) -> Path:
    config = config or {"model": SMALL.to_checkpoint_model_section(), "data": {"max_sec": 54}}
    torch.save(OrderedDict(weight=OrderedDict(weight), config=config, info="GPT-e1"), path)
    return path


def _weights() -> OrderedDict:
    return OrderedDict(("model." + k, v.half()) for k, v in small_model().state_dict().items())


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    weight = _weights()
    del weight["model.h.layers.1.norm2.bias"]
    weight["model.extra.weight"] = torch.zeros(2)
    with pytest.raises(
        KoeError, match=r"missing keys: model.h.layers.1.norm2.bias; unexpected keys: model.extra.weight"
    ):
        load_gpt(_write(tmp_path / "bad.ckpt", weight))


def test_keys_without_prefix_are_rejected(tmp_path):
    weight = OrderedDict((k.removeprefix("model."), v) for k, v in _weights().items())
    with pytest.raises(KoeError, match="no weight key starts with 'model.'"):
        load_gpt(_write(tmp_path / "noprefix.ckpt", weight))


def test_shape_mismatch_with_config_is_reported(tmp_path):
    config = {
        "model": {**SMALL.to_checkpoint_model_section(), "phoneme_vocab_size": 512},
        "data": {"max_sec": 54},
    }
    with pytest.raises(
        KoeError, match=r"ar_text_embedding.word_embeddings.weight \[732, 32\] \(expected \[512, 32\]\)"
    ):
        load_gpt(_write(tmp_path / "v1cfg.ckpt", _weights(), config))


@pytest.mark.skipif(not (FIXTURES / "sovits_v2.pth").is_file(), reason="parity fixtures not present")
def test_sovits_files_are_recognised(tmp_path):
    with pytest.raises(KoeError, match=r"is a SoVITS weight file \(.pth\), version v2, expected a GPT"):
        load_gpt(FIXTURES / "sovits_v2.pth")
    with pytest.raises(KoeError, match=r"SoVITS weight file \(.pth\), version v2Pro"):
        load_gpt(FIXTURES / "sovits_v2pro.pth")


def test_other_bad_files(tmp_path):
    with pytest.raises(KoeError, match="GPT weight file not found"):
        load_gpt(tmp_path / "nope.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(KoeError, match="not a GPT-SoVITS weight file"):
        load_gpt(text)
    lightning = tmp_path / "epoch=1-step=10.ckpt"
    torch.save({"state_dict": {}, "epoch": 1}, lightning)
    with pytest.raises(KoeError, match="Lightning training checkpoint"):
        read_gpt_file(lightning)
    sovits_like = tmp_path / "synth.ckpt"
    torch.save({"weight": {"enc_p.proj.weight": torch.zeros(1)}, "config": {}}, sovits_like)
    with pytest.raises(KoeError, match="SoVITS weight file"):
        load_gpt(sovits_like)
