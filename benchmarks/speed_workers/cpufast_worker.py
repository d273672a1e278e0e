"""gpt-sovits-cpufast (the official code's inference fork, same speed) on the shared workload.

Runs in the fork's own virtual environment. Models are loaded the way its `TTS.init_t2s_weights` and
`TTS.init_vits_weights` load them (inference-only T2S, SoVITS with the generator's weight norm
removed, fp32, eval), plus its HuBERT so that the memory figure holds the same models as koe's. EOS
is masked with a forward hook on the output layer, so `infer_panel` returns exactly 100 tokens;
the hook's call times give prefill and per-token times. First audio: `infer_panel_naive` in
streaming mode (fixed 16-token chunks), then `decode_streaming` of the first chunk, as its
`TTS.run(streaming_mode=True, fixed_length_chunk=True)` does.

Then (unless `--no-pipeline`) the whole official `TTS.run()` on the same English sentences koe's
worker uses, its own front end (g2p_en) included, reference cached by its first call: the real-time
factor of a one-shot run and the first audio of its streaming mode (fixed 16-token chunks), every
sentence exactly 100 tokens. Its BERT loader wants a `pytorch_model.bin` in its own layout, so a
seeded random one (same architecture; English never runs it) is written next to the models once.

    ~/.cache/koe-bench/venvs/cpufast/bin/python benchmarks/speed_workers/cpufast_worker.py --models DIR
"""

from __future__ import annotations

import contextlib
import io
import os
import site
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import workload as W  # noqa: E402

OWN_BERT = "cpufast-chinese-roberta"  # its BERT folder in its own weight layout, written once


def quietly(fn, *args, **kwargs):
    """Call fn with its progress prints swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def main() -> None:
    args = W.worker_args(__doc__.splitlines()[0])
    import torch

    torch.set_num_threads(args.threads)
    tree = Path(site.getsitepackages()[0]) / "GPT_SoVITS"  # the fork installs the official tree here
    if not tree.is_dir():
        W.skip("cpufast", args.mode, f"no GPT_SoVITS tree in {tree.parent}: is gpt-sovits-cpufast installed?")
        return
    sys.path[:0] = [str(tree.parent), str(tree)]
    os.chdir(tree)  # the official code opens some files relative to the working directory
    from AR.models.t2s_lightning_module import Text2SemanticLightningModule
    from module.mel_processing import spectrogram_torch
    from module.models import SynthesizerTrn
    from process_ckpt import load_sovits_new

    models = Path(args.models)
    rec = W.Recorder("cpufast", args.mode, args)
    started = time.perf_counter()
    gpt = torch.load(models / "rand-v2-e1.ckpt", map_location="cpu", weights_only=False)
    lightning = Text2SemanticLightningModule(
        gpt["config"], "****", is_train=False, build_t2s_transformer=False, build_h_module=False
    )
    lightning.load_inference_only_state_dict(gpt["weight"])
    lightning.model.release_inference_only_unused_modules()
    t2s = lightning.eval().model
    del gpt

    sovits_file = load_sovits_new(str(models / "rand-v2_e1_s1.pth"))
    hps = sovits_file["config"]
    hps["model"]["semantic_frame_rate"] = "25hz"
    hps["model"]["version"] = "v2"
    data = hps["data"]
    vits = SynthesizerTrn(
        data["filter_length"] // 2 + 1,
        hps["train"]["segment_size"] // data["hop_length"],
        n_speakers=data["n_speakers"],
        **hps["model"],
    )
    vits.load_state_dict(sovits_file["weight"], strict=False)  # enc_q is not in inference files
    quietly(vits.dec.remove_weight_norm)
    vits = vits.eval()
    hubert = None
    try:
        from feature_extractor.cnhubert import CNHubert

        hubert = CNHubert(str(models / "chinese-hubert-base")).eval()  # noqa: F841 (held for the memory figure)
    except Exception as e:  # its own loader; the memory figure then lacks HuBERT
        rec.note(f"HuBERT not loaded ({type(e).__name__}: {e}); memory is T2S + SoVITS only")
    rec.loaded(time.perf_counter() - started)
    rec.result["versions"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    stamps: list[float] = []

    def mask_eos(module, inputs, output):
        stamps.append(time.perf_counter())
        output = output.clone()
        output[..., t2s.EOS] = float("-inf")
        return output

    t2s.ar_predict_layer.register_forward_hook(mask_eos)

    x = W.inputs()
    phones = torch.from_numpy(np.concatenate([x["prompt_phones"], x["target_phones"]]))[None]  # [1, 60]
    phone_len = torch.LongTensor([phones.shape[1]])
    bert = torch.zeros(1, 1024, phones.shape[1])
    prompt = torch.from_numpy(x["prompt_tokens"])[None]
    text = torch.from_numpy(x["target_phones"])[None]
    codes = torch.from_numpy(x["codes"]).view(1, 1, -1)
    reference = torch.from_numpy(x["reference"])[None]
    spec = spectrogram_torch(
        reference, data["filter_length"], data["sampling_rate"], data["hop_length"], data["win_length"],
        center=False,
    )  # fmt: skip
    sampling = {"top_k": 15, "top_p": 1, "temperature": 1, "repetition_penalty": 1.35}

    def t2s_run() -> dict:
        stamps.clear()
        t0 = time.perf_counter()
        with torch.inference_mode():
            y, _ = quietly(
                t2s.infer_panel, phones, phone_len, prompt, bert, early_stop_num=W.N_DECODE_TOKENS - 1,
                **sampling,
            )  # fmt: skip
        t1 = time.perf_counter()
        generated = y.shape[1] - prompt.shape[1]
        assert generated == W.N_DECODE_TOKENS == len(stamps), (generated, len(stamps))
        return {
            "prefill_ms": (stamps[0] - t0) * 1000,
            "step_ms": W.median(W.step_times_ms(stamps)),
            "t2s_ms": (t1 - t0) * 1000,
        }

    def sovits_run() -> dict:
        t0 = time.perf_counter()
        with torch.inference_mode():
            audio = vits.decode(codes, text, [spec], speed=1.0)
        seconds = time.perf_counter() - t0
        audio = audio[0] if isinstance(audio, tuple) else audio
        return {"sovits_ms": seconds * 1000, "audio_s": audio.shape[-1] / W.SAMPLE_RATE}

    def first_audio() -> dict:
        stamps.clear()
        t0 = time.perf_counter()
        with torch.inference_mode(), contextlib.redirect_stdout(io.StringIO()):
            chunks = t2s.infer_panel_naive(
                phones, phone_len, prompt, bert, early_stop_num=1500, streaming_mode=True,
                chunk_length=W.STREAM_CHUNK, mute_emb_sim_matrix=None, **sampling,
            )  # fmt: skip
            tokens, _ = next(chunks)
            t1 = time.perf_counter()
            vits.decode_streaming(
                tokens.view(1, 1, -1), text, [spec], speed=1.0, result_length=None, overlap_frames=None,
                padding_length=0,
            )  # fmt: skip
            t2 = time.perf_counter()
            chunks.close()
        return {"first_audio_ms": (t2 - t0) * 1000, "first_tokens_ms": (t1 - t0) * 1000}

    rec.measure_engine(t2s_run, sovits_run, None if args.no_stream else first_audio)
    if not args.no_pipeline:
        del t2s, vits, hubert
        measure_whole_run(rec, models)
    rec.emit()


def own_bert_folder(models: Path) -> Path:
    """A random BERT in the fork's own layout (its `load_model` reads `pytorch_model.bin` strictly)."""
    import shutil

    import torch
    from text.chinese_bert import BertForMaskedLM, _load_config

    folder = models / OWN_BERT
    if not (folder / "pytorch_model.bin").exists():
        folder.mkdir(exist_ok=True)
        for name in ("config.json", "tokenizer.json"):
            shutil.copy(models / "chinese-roberta-wwm-ext-large" / name, folder / name)
        torch.manual_seed(W.SEED)
        torch.save(BertForMaskedLM(_load_config(str(folder))).state_dict(), folder / "pytorch_model.bin")
    return folder


def measure_whole_run(rec: W.Recorder, models: Path) -> None:
    """The official `TTS.run()`: RTF of a one-shot run and first audio in streaming mode."""
    from TTS_infer_pack.TTS import TTS

    os.environ.setdefault("NLTK_DATA", str(W.NLTK_DATA))  # g2p_en's tagger
    config = {
        "custom": {
            "device": "cpu", "is_half": False, "version": "v2",
            "t2s_weights_path": str(models / "rand-v2-e1.ckpt"),
            "vits_weights_path": str(models / "rand-v2_e1_s1.pth"),
            "cnhuhbert_base_path": str(models / "chinese-hubert-base"),
            "bert_base_path": str(own_bert_folder(models)),
        }
    }  # fmt: skip
    tts = quietly(TTS, config)
    passes = [0]

    def fixed_length(module, inputs, output):  # EOS masked on 100 passes, forced on the 101st
        passes[0] += 1
        output = output.clone()
        if passes[0] <= W.N_DECODE_TOKENS:
            output[..., tts.t2s_model.model.EOS] = float("-inf")
        else:
            output[..., : tts.t2s_model.model.EOS] = float("-inf")
        return output

    tts.t2s_model.model.ar_predict_layer.register_forward_hook(fixed_length)
    request = {
        "text": W.SHORT, "text_lang": "en", "ref_audio_path": str(models / "ref5s.wav"),
        "prompt_text": W.PROMPT_TEXT, "prompt_lang": "en", "top_k": 15, "top_p": 1, "temperature": 1,
        "repetition_penalty": 1.35, "text_split_method": "cut5", "batch_size": 1, "seed": 1,
    }  # fmt: skip

    def whole(streaming: bool) -> dict:
        passes[0] = 0
        extra = {"streaming_mode": True, "fixed_length_chunk": True, "min_chunk_length": W.STREAM_CHUNK}
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            pieces = tts.run({**request, **(extra if streaming else {})})
            next(pieces)
            first = time.perf_counter() - t0
            if streaming:
                pieces.close()
                return {"run_first_audio_ms": first * 1000}
            for _ in pieces:
                pass
        total = time.perf_counter() - t0
        assert passes[0] == W.N_DECODE_TOKENS + 1, passes[0]
        return {"run_total_ms": total * 1000, "run_rtf": total / (W.N_DECODE_TOKENS / 25)}

    rec.measure("pipeline_stream", lambda: whole(True))
    rec.measure("pipeline", lambda: whole(False))


if __name__ == "__main__":
    main()
