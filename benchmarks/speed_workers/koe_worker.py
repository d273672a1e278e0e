"""koe on the shared workload, through its public API, in one T2S precision (`--mode`).

Loads the voice like a user's (`TTSPipeline.from_paths`, HuBERT included), then measures:

* t2s: prefill (60 phones + 125 prompt tokens) and per-token decode (exactly 100 tokens, EOS masked)
  through `t2s_decode.generate`;
* sovits: `sovits.decode` of the 100 workload codes against the 5 s reference (its style vector
  computed once, as koe's pipeline does);
* stream: first audio through token streaming (`t2s_decode.stream`, 16-token chunk, then the
  first chunk's `decode_streaming`), the engine-level path the peers are measured on;
* pipeline: the whole `TTSPipeline.run` on a 10-word English sentence, reference cached, front end
  included: time to first audio with fixed-length token streaming, and the real-time factor of a
  one-shot run (every sentence exactly 100 tokens); and the first audio of a Chinese sentence of
  the same length, BERT features included (when the models folder has chinese-roberta-wwm-ext-large).

    .venv/bin/python benchmarks/speed_workers/koe_worker.py --models DIR --mode fp32
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the koe CLI runs: idle OpenMP threads do not spin

import numpy as np  # noqa: E402
import workload as W  # noqa: E402

os.environ.setdefault("NLTK_DATA", str(W.NLTK_DATA))
ENGLISH = (W.SHORT, "en")  # (text, text_lang) of the whole-pipeline runs


class FixedLength:
    """The T2S model with EOS masked on its first `tokens` passes and forced on the next one, so every
    generation is exactly `tokens` long; `stamps` holds the time each pass returned its logits."""

    def __init__(self, model, tokens: int):
        self._model = model
        self.tokens = tokens
        self.stamps: list[float] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _fix(self, logits):
        self.stamps.append(time.perf_counter())
        eos = self._model.config.eos
        if len(self.stamps) <= self.tokens:
            logits[:, eos] = float("-inf")
        else:
            logits[:, :eos] = float("-inf")
        return logits

    def prefill(self, *args, **kwargs):
        return self._fix(self._model.prefill(*args, **kwargs))

    def decode_step(self, *args, **kwargs):
        return self._fix(self._model.decode_step(*args, **kwargs))


def main() -> None:
    args = W.worker_args(__doc__.splitlines()[0])
    import torch

    torch.set_num_threads(args.threads)
    from agent.config import TtsConfig
    from agent.errors import KoeError
    from tts.models.sampling import SamplingParams
    from tts.models.t2s_decode import generate, stream
    from tts.pipeline import TTSPipeline

    models = Path(args.models)
    rec = W.Recorder("koe", args.mode, args)
    started = time.perf_counter()
    bert_dir = models / "chinese-roberta-wwm-ext-large"  # loads at the first Chinese text
    try:
        pipeline = TTSPipeline.from_paths(
            models / "rand-v2-e1.ckpt", models / "rand-v2_e1_s1.pth", bert_dir if bert_dir.is_dir() else None,
            models / "chinese-hubert-base", precision=args.mode,
        )  # fmt: skip
    except KoeError as e:
        W.skip("koe", args.mode, f"TTSPipeline.from_paths(precision={args.mode!r}) refused: {e}")
        return
    rec.loaded(time.perf_counter() - started)
    rec.result["versions"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    ref = str(models / "ref5s.wav")
    pipeline.prepare_reference(ref)  # reference cached (HuBERT loaded and run), as in a conversation
    pipeline.hubert.release()  # as `TtsEngine` does once a voice's clips are prepared ([tts] keep_hubert)
    spec = pipeline.references.style(ref).spec  # [1, 1025, frames] of the 5 s reference
    # the reference's style vector, computed once as koe's pipeline does (the official decode
    # recomputes it from the spectrogram in every call and every streaming chunk)
    style = pipeline.references.style_vector([pipeline.references.style(ref)], pipeline.device)

    x = W.inputs()
    fixed = FixedLength(pipeline.t2s, W.N_DECODE_TOKENS)
    ids = torch.from_numpy(np.concatenate([x["prompt_phones"], x["target_phones"]]))[None]  # [1, 60]
    bert = torch.zeros(1, 1024, ids.shape[1], dtype=pipeline.t2s.bert_proj.weight.dtype)
    prompt = torch.from_numpy(x["prompt_tokens"])[None]
    text = torch.from_numpy(x["target_phones"])[None]
    codes = torch.from_numpy(x["codes"]).view(1, 1, -1)
    params = SamplingParams()  # the official defaults: top_k 15, top_p 1, temperature 1, penalty 1.35

    def t2s() -> dict:
        fixed.stamps.clear()
        t0 = time.perf_counter()
        result = generate(fixed, ids, bert, prompt, params, early_stop_num=W.N_DECODE_TOKENS - 1)
        t1 = time.perf_counter()
        assert result.num_steps == W.N_DECODE_TOKENS == len(fixed.stamps), (
            result.num_steps,
            len(fixed.stamps),
        )
        return {
            "prefill_ms": (fixed.stamps[0] - t0) * 1000,
            "step_ms": W.median(W.step_times_ms(fixed.stamps)),
            "t2s_ms": (t1 - t0) * 1000,
        }

    def sovits() -> dict:
        t0 = time.perf_counter()
        with torch.inference_mode():
            audio = pipeline.sovits.decode(codes, text, [spec], style=style)
        return {"sovits_ms": (time.perf_counter() - t0) * 1000, "audio_s": audio.shape[-1] / W.SAMPLE_RATE}

    def first_audio() -> dict:
        fixed.stamps.clear()
        t0 = time.perf_counter()
        chunks = stream(fixed, ids, bert, prompt, params, chunk_length=W.STREAM_CHUNK)
        chunk = next(chunks)
        t1 = time.perf_counter()
        with torch.inference_mode():
            audio, _, _ = pipeline.sovits.decode_streaming(
                chunk.tokens.view(1, 1, -1), text, [spec], style=style
            )
        t2 = time.perf_counter()
        chunks.close()
        return {"first_audio_ms": (t2 - t0) * 1000, "first_tokens_ms": (t1 - t0) * 1000}

    rec.measure_engine(t2s, sovits, None if args.no_stream else first_audio)

    if not args.no_pipeline:
        pipeline.t2s = fixed  # every sentence exactly 100 tokens (4 s of speech)
        request = {"ref_audio_path": ref, "prompt_text": W.PROMPT_TEXT, "prompt_lang": "en", "seed": 1}

        def whole(
            streaming: bool, first_chunk: int | None = None, key: str = "run_first_audio_ms", text=ENGLISH
        ) -> dict:
            fixed.stamps.clear()
            extra = {"streaming_mode": True, "fixed_length_chunk": True} if streaming else {}
            if first_chunk is not None:
                extra["first_chunk_length"] = first_chunk
            t0 = time.perf_counter()
            pieces = pipeline.run({**request, "text": text[0], "text_lang": text[1], **extra})
            next(pieces)
            first = time.perf_counter() - t0
            if streaming:
                pieces.close()
                return {key: first * 1000}
            for _ in pieces:
                pass
            total = time.perf_counter() - t0
            speech_s = W.N_DECODE_TOKENS / 25
            return {"run_total_ms": total * 1000, "run_rtf": total / speech_s}

        rec.measure("pipeline_stream", lambda: whole(True))
        # koe's own streaming default ([tts] stream_first_chunk_tokens): a shorter first chunk
        koe_chunk = TtsConfig().stream_first_chunk_tokens
        rec.measure("pipeline_stream_koe", lambda: whole(True, koe_chunk, "run_first_audio_koe_ms"))
        rec.measure("pipeline", lambda: whole(False))
        if bert_dir.is_dir():  # Chinese: the BERT features of the sentence come before its first token
            chinese = (W.SHORT_ZH, "zh")
            rec.measure(
                "pipeline_stream_zh", lambda: whole(True, koe_chunk, "run_first_audio_zh_ms", chinese)
            )
    rec.emit()


if __name__ == "__main__":
    main()
