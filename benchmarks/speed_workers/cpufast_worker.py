"""gpt-sovits-cpufast (the official code's inference fork, same speed) on the shared workload.

Runs in the fork's own virtual environment. Models are loaded the way its `TTS.init_t2s_weights` and
`TTS.init_vits_weights` load them (inference-only T2S, SoVITS with the generator's weight norm
removed, fp32, eval), plus its HuBERT so that the memory figure holds the same models as koe's. EOS
is masked with a forward hook on the output layer, so `infer_panel` returns exactly 100 tokens;
the hook's call times give prefill and per-token times. First audio: `infer_panel_naive` in
streaming mode (fixed 16-token chunks), then `decode_streaming` of the first chunk, as its
`TTS.run(streaming_mode=True, fixed_length_chunk=True)` does.

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
    rec.emit()


if __name__ == "__main__":
    main()
