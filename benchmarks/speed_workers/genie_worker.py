"""genie-tts (ONNX Runtime) on the shared workload, in its own virtual environment.

`--prepare` runs genie's own converter on the random-weight .ckpt/.pth once (into MODELS/genie-v2).
The sessions come from genie's `ModelManager.load_character` (its session options and fp16-to-fp32
weight loading, CPU provider, ONNX Runtime's default thread count). The T2S loop is the one of
genie's `t2s_cpu` with the stop test removed, so exactly 100 tokens are generated (first stage +
99 stage calls); the prompt tokens come from the encoder's own SSL input. genie has no token
streaming, so it reports no first-audio figure. `import genie_tts` insists on a data pack
(HuBERT, speaker encoder) that only a model hub serves; the worker points GENIE_DATA_DIR at empty
placeholders, which the engine-level path never opens (so its memory figure lacks HuBERT).

    ~/.cache/koe-bench/venvs/genie/bin/python benchmarks/speed_workers/genie_worker.py --models DIR
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload as W  # noqa: E402

CONVERTED = "genie-v2"


def use_placeholder_data(models: Path) -> None:
    """Satisfy genie's import-time check for its data pack with empty stand-ins."""
    data = models / "genie-data"
    (data / "chinese-hubert-base").mkdir(parents=True, exist_ok=True)
    (data / "speaker_encoder.onnx").touch()
    os.environ["GENIE_DATA_DIR"] = str(data)


def prepare(models: Path) -> None:
    """Convert the .ckpt/.pth with genie's converter (skipped when already done)."""
    out = models / CONVERTED
    if (out / "vits_fp16.bin").exists():
        return
    work = models / "genie-work"  # the converter writes a Cache/ folder into the working directory
    work.mkdir(exist_ok=True)
    os.chdir(work)
    from genie_tts.Converter.v2.Converter import convert

    convert(str(models / "rand-v2-e1.ckpt"), str(models / "rand-v2_e1_s1.pth"), str(out))
    if not (out / "vits_fp16.bin").exists():
        raise SystemExit(f"genie's converter wrote no model into {out}")


def main() -> None:
    if "--prepare" in sys.argv:
        sys.argv.remove("--prepare")
        args = W.worker_args(__doc__.splitlines()[0])
        use_placeholder_data(Path(args.models))
        prepare(Path(args.models))
        return
    args = W.worker_args(__doc__.splitlines()[0])
    models = Path(args.models)
    use_placeholder_data(models)
    rec = W.Recorder("genie", args.mode, args)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        import onnxruntime
        from genie_tts.ModelManager import model_manager

    if not model_manager.load_character("bench", str(models / CONVERTED), language="English"):
        W.skip("genie", args.mode, f"genie's ModelManager could not load {models / CONVERTED}")
        return
    model = model_manager.get("bench")
    rec.loaded(time.perf_counter() - started)
    rec.result["versions"] = {"onnxruntime": onnxruntime.__version__, "threads": "onnxruntime default"}
    rec.note("no token streaming in genie-tts: no first-audio figure")
    rec.note("genie's HuBERT comes from its data pack (model hub only): memory is T2S + SoVITS")

    import numpy as np

    x = W.inputs()
    ref_seq, text_seq = x["prompt_phones"][None], x["target_phones"][None]
    ref_bert = np.zeros((ref_seq.shape[1], 1024), np.float32)
    text_bert = np.zeros((text_seq.shape[1], 1024), np.float32)
    stage_names = [i.name for i in model.T2S_STAGE_DECODER.get_inputs()]

    def t2s() -> dict:
        t0 = time.perf_counter()
        x_, prompts = model.T2S_ENCODER.run(
            None, {"ref_seq": ref_seq, "text_seq": text_seq, "ref_bert": ref_bert, "text_bert": text_bert,
                   "ssl_content": x["ssl"]},
        )  # fmt: skip
        y, y_emb, *kv = model.T2S_FIRST_STAGE_DECODER.run(None, {"x": x_, "prompts": prompts})
        stamps = [time.perf_counter()]
        for _ in range(W.N_DECODE_TOKENS - 1):
            y, y_emb, _stop, *kv = model.T2S_STAGE_DECODER.run(None, dict(zip(stage_names, [y, y_emb, *kv])))
            stamps.append(time.perf_counter())
        generated = y.shape[1] - prompts.shape[1]
        assert generated == W.N_DECODE_TOKENS, (generated, prompts.shape)
        return {
            "prefill_ms": (stamps[0] - t0) * 1000,
            "step_ms": W.median(W.step_times_ms(stamps)),
            "t2s_ms": (stamps[-1] - t0) * 1000,
        }

    def sovits() -> dict:
        t0 = time.perf_counter()
        audio = model.VITS.run(
            None,
            {
                "text_seq": text_seq,
                "pred_semantic": x["codes"][None, None],
                "ref_audio": x["reference"][None],
            },
        )[0]
        return {"sovits_ms": (time.perf_counter() - t0) * 1000, "audio_s": audio.shape[-1] / W.SAMPLE_RATE}

    rec.measure_engine(t2s, sovits)  # genie-tts has no token streaming
    rec.emit()


if __name__ == "__main__":
    main()
