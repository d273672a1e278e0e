"""`koe transcribe` and `koe listen`: the scriptable front doors of the asr package.

    koe transcribe [--model NAME|DIR] [--language L] [--beam-size N] [--json] FILE...
    koe listen [--input FILE [--fast]] [--device NAME|INDEX] [--model NAME|DIR] [--language L] [--json]

With --json both print one JSON object per line (per file; per event), flushed at once so they pipe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from pydantic import ValidationError

from agent.config import AsrConfig, KoeConfig
from agent.errors import KoeError
from asr.endpointer import SpeechStarted
from asr.listener import Heard, Listener, PartialTranscript
from asr.sources import FileSource, MicrophoneSource
from asr.transcriber import Transcriber, Transcript


def register(subparsers) -> None:
    transcribe = subparsers.add_parser(
        "transcribe", help="transcribe audio files", description="Transcribe audio files with faster-whisper."
    )
    _add_model_options(transcribe)
    transcribe.add_argument("--beam-size", type=int, metavar="N", help="beam size (default: [asr] beam_size)")
    transcribe.add_argument("--json", action="store_true", help="one JSON object per file and line")
    transcribe.add_argument(
        "files", nargs="+", metavar="FILE", help="audio files (any format, rate, channels)"
    )
    transcribe.set_defaults(handler=run_transcribe)

    listen = subparsers.add_parser(
        "listen",
        help="print what the microphone (or a file) hears",
        description="Detect utterances live and print their text and latency.",
    )
    listen.add_argument("--input", metavar="FILE", help="play this audio file as if it were the microphone")
    listen.add_argument(
        "--fast", action="store_true", help="with --input: as fast as possible, not real time"
    )
    listen.add_argument("--device", metavar="NAME|INDEX", help="microphone (default: [audio] input_device)")
    _add_model_options(listen)
    listen.add_argument("--json", action="store_true", help="one JSON object per event and line")
    listen.set_defaults(handler=run_listen)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="NAME|DIR", help="faster-whisper model name or folder ([asr] model)"
    )
    parser.add_argument("--language", metavar="L", help="language code such as en or de (default: detect)")


def asr_settings(args: argparse.Namespace, config: KoeConfig) -> AsrConfig:
    """[asr] with the command-line overrides applied and validated."""
    overrides = {
        "model": args.model,
        "language": args.language,
        "beam_size": getattr(args, "beam_size", None),
    }
    data = config.asr.model_dump() | {key: value for key, value in overrides.items() if value is not None}
    try:
        return AsrConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise KoeError(f"invalid ASR option: {problems}") from None


def run_transcribe(args: argparse.Namespace, config: KoeConfig) -> int:
    transcriber = Transcriber.from_config(asr_settings(args, config), config.models.dir)
    failed = 0
    for path in args.files:
        try:
            transcript = transcriber.transcribe(path)
        except KoeError as exc:  # the other files are still transcribed
            print(f"koe: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            _print_json({"file": path, **_transcript_json(transcript)})
        else:
            _print_transcript(path, transcript)
    return 2 if failed else 0


def _transcript_json(transcript: Transcript) -> dict:
    return {
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in transcript.segments],
        "elapsed": round(transcript.elapsed, 3),
    }


def _print_transcript(path: str, transcript: Transcript) -> None:
    print(
        f"{path} ({transcript.duration:.1f} s, {transcript.language}, "
        f"transcribed in {transcript.elapsed:.2f} s)",
        flush=True,
    )
    for segment in transcript.segments:
        print(f"[{segment.start:7.2f} - {segment.end:7.2f}] {segment.text}", flush=True)


def run_listen(args: argparse.Namespace, config: KoeConfig) -> int:
    if args.fast and not args.input:
        raise KoeError("--fast needs --input FILE (the microphone only runs in real time)")
    asr = asr_settings(args, config)
    if args.input:
        source = FileSource(args.input, config.audio.block_ms, fast=args.fast)
    else:
        source = MicrophoneSource(args.device or config.audio.input_device, config.audio.block_ms)
    transcriber = Transcriber.from_config(asr, config.models.dir)
    listener = Listener(source, transcriber, config.vad, asr.partial_interval_ms)
    if not args.json:
        print(
            "listening (Ctrl-C to stop)" if not args.input else f"listening to {args.input}", file=sys.stderr
        )
    asyncio.run(_print_events(listener, args.json))
    return 0


async def _print_events(listener: Listener, as_json: bool) -> None:
    async for event in listener.events():
        if isinstance(event, SpeechStarted):
            if as_json:
                _print_json({"event": "speech_started", "t": round(event.t, 3)})
            else:
                print(f"  speech at {event.t:.2f} s", file=sys.stderr, flush=True)
        elif isinstance(event, PartialTranscript):
            if as_json:
                _print_json(
                    {
                        "event": "partial",
                        "start": round(event.start, 3),
                        "t": round(event.t, 3),
                        "text": event.text,
                    }
                )
            else:
                print(f"  ... {event.text}", file=sys.stderr, flush=True)
        elif isinstance(event, Heard):
            utterance = event.utterance
            if as_json:
                _print_json(
                    {
                        "event": "utterance",
                        "start": round(utterance.start, 3),
                        "end": round(utterance.end, 3),
                        "text": event.text,
                        "latency_ms": round(event.latency_ms, 1),
                        "language": event.transcript.language,
                        "final": utterance.final,
                    }
                )
            else:
                more = "" if utterance.final else "  (continues)"
                print(
                    f"[{utterance.start:7.2f} - {utterance.end:7.2f}] {event.text}  ({event.latency_ms:.0f} ms){more}",
                    flush=True,
                )


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)
