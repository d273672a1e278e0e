"""Endpointing: turn a stream of audio into utterances, with a speech-started event for barge-in.

A pure state machine (no I/O, no clock): `process(block)` takes audio of any length and returns the
events it completed; all times are seconds from the start of the stream, counted in samples.

    idle --(start_ms of speech, gaps under MAX_START_GAP_MS)--> speaking    emits SpeechStarted
    speaking --(end_silence_ms of silence)--> idle                          emits Utterance(final=True)
    speaking --(max_utterance_s reached)--> cut at the longest recent pause, emits Utterance(final=False)
                                            and keeps speaking with the rest

Utterance audio holds `preroll_ms` before the speech (soft onsets the VAD missed) and TAIL_MS after
it (Whisper transcribes a word cut at its very end badly). Utterances with less than
`min_utterance_ms` from first to last speech are dropped (a cough, a click): they still emitted SpeechStarted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from agent.config import VadConfig
from asr.audio import SAMPLE_RATE
from asr.vad import SpeechDetector

MAX_START_GAP_MS = 100  # a silence this long before the start threshold is reached resets the count
MAX_ONSET_BACKDATE_MS = 150  # the start may move back this far over frames the gate alone called speech
TAIL_MS = 200  # audio kept after the last speech frame
CUT_LOOKBACK_S = 5.0  # at max length, the pause to cut at is searched for in this last stretch


@dataclass
class SpeechStarted:
    t: float  # first moment of speech
    detected_at: float  # stream time at which start_ms of speech had been heard


@dataclass(eq=False)  # events compare by identity (their audio arrays have no single truth value)
class Utterance:
    audio: np.ndarray  # float32 16 kHz mono: pre-roll + speech + tail
    audio_start: float  # stream time of audio[0]
    start: float  # first moment of speech
    end: float  # last moment of speech
    detected_at: float  # stream time at which the end was decided (end + end_silence, or the cut)
    final: bool = True  # False: cut at the maximum length, the speaker is still talking

    @property
    def duration(self) -> float:
        return self.end - self.start


Event = SpeechStarted | Utterance


def ms_to_samples(ms: float) -> int:
    return int(round(ms * SAMPLE_RATE / 1000))


def longest_false_run(flags: list[bool]) -> tuple[int, int] | None:
    """(first, stop) indices of the longest run of False in `flags`, or None when all are True."""
    best, run_start = None, None
    for i, flag in enumerate([*flags, True]):
        if not flag and run_start is None:
            run_start = i
        elif flag and run_start is not None:
            if best is None or i - run_start > best[1] - best[0]:
                best = (run_start, i)
            run_start = None
    return best


class Endpointer:
    """The VAD state machine of one audio stream."""

    def __init__(self, config: VadConfig | None = None, detector: SpeechDetector | None = None) -> None:
        config = config or VadConfig()
        self.detector = detector or SpeechDetector.from_config(config)
        self.frame = self.detector.frame_samples
        self.start_samples = ms_to_samples(config.start_ms)
        self.end_silence_samples = ms_to_samples(config.end_silence_ms)
        self.preroll_samples = ms_to_samples(config.preroll_ms)
        self.min_utterance_samples = ms_to_samples(config.min_utterance_ms)
        self.max_samples = int(config.max_utterance_s * SAMPLE_RATE)
        self.max_start_gap = ms_to_samples(MAX_START_GAP_MS)
        self.tail_samples = ms_to_samples(TAIL_MS)
        self.position = 0  # samples processed so far (end of the last frame)
        self._pending = np.zeros(0, np.float32)
        # Recent frames, enough to cover the pre-roll before any start candidate.
        history_frames = (self.preroll_samples + 4 * self.start_samples + SAMPLE_RATE) // self.frame + 1
        # (first sample, frame, speech, gate open) of recent frames
        self._history: deque[tuple[int, np.ndarray, bool, bool]] = deque(maxlen=history_frames)
        self._reset_candidate()
        self.speaking = False
        # The utterance in progress (valid while speaking), all positions in samples.
        self._audio_start = self._speech_start = self._last_speech_end = 0
        self._frames: list[np.ndarray] = []  # audio from _audio_start, frame by frame
        self._flags: list[bool] = []  # speech verdict of each of those frames

    # -- public -----------------------------------------------------------------------------------

    def process(self, block: np.ndarray) -> list[Event]:
        """Feed audio (float32 16 kHz mono, any length); returns the events it completed."""
        self._pending = np.concatenate([self._pending, np.asarray(block, np.float32)])
        events: list[Event] = []
        while len(self._pending) >= self.frame:
            frame, self._pending = self._pending[: self.frame], self._pending[self.frame :]
            events.extend(self._process_frame(frame))
        return events

    def flush(self) -> list[Event]:
        """End of stream: close the utterance in progress, if any."""
        if not self.speaking:
            return []
        utterance = self._finish(self._last_speech_end, final=True)
        return [utterance] if utterance else []

    def current_audio(self) -> np.ndarray | None:
        """Audio of the utterance in progress (for partial transcripts), None when idle."""
        return np.concatenate(self._frames) if self.speaking else None

    def ending_audio(self) -> tuple[float, float, np.ndarray] | None:
        """(audio_start, end, audio) the utterance in progress will have if no more speech comes.

        Known once TAIL_MS of silence followed the last speech: from then on the final utterance's audio
        is fixed, so a listener can start transcribing it before the end of the turn is decided.
        """
        if not self.speaking or self.position - self._last_speech_end < self.tail_samples:
            return None
        if self._last_speech_end - self._speech_start < self.min_utterance_samples:
            return None
        stop = self._last_speech_end + self.tail_samples
        audio = np.concatenate(self._frames)[: stop - self._audio_start]
        return self._audio_start / SAMPLE_RATE, self._last_speech_end / SAMPLE_RATE, audio

    @property
    def last_speech_end(self) -> float:
        """End of the last speech frame of the utterance in progress, seconds."""
        return self._last_speech_end / SAMPLE_RATE

    @property
    def time(self) -> float:
        """Stream time of the audio processed so far, seconds."""
        return self.position / SAMPLE_RATE

    @property
    def speech_start(self) -> float:
        """Start of the utterance in progress, seconds (only meaningful while `speaking`)."""
        return self._speech_start / SAMPLE_RATE

    # -- state machine ----------------------------------------------------------------------------

    def _process_frame(self, frame: np.ndarray) -> list[Event]:
        frame_start = self.position
        self.position += len(frame)
        speech = self.detector.is_speech(frame)
        self._history.append((frame_start, frame, speech, self.detector.gate_open))
        if self.speaking:
            return self._while_speaking(frame, frame_start, speech)
        return self._while_idle(frame_start, speech)

    def _while_idle(self, frame_start: int, speech: bool) -> list[Event]:
        if speech:
            if self._candidate_start is None:
                self._candidate_start = frame_start
            self._candidate_speech += self.frame
            self._candidate_gap = 0
            if self._candidate_speech >= self.start_samples:
                return [self._start(self._onset(self._candidate_start))]
        elif self._candidate_start is not None:
            self._candidate_gap += self.frame
            if self._candidate_gap > self.max_start_gap:
                self._reset_candidate()
        return []

    def _while_speaking(self, frame: np.ndarray, frame_start: int, speech: bool) -> list[Event]:
        self._frames.append(frame)
        self._flags.append(speech)
        if speech:
            self._last_speech_end = self.position
        if self.position - self._last_speech_end >= self.end_silence_samples:
            utterance = self._finish(self._last_speech_end, final=True)
            return [utterance] if utterance else []
        if self.position - self._speech_start >= self.max_samples:
            return self._cut()
        return []

    def _start(self, speech_start: int) -> SpeechStarted:
        self.speaking = True
        self._speech_start = speech_start
        self._last_speech_end = self.position
        kept = [item for item in self._history if item[0] + self.frame > speech_start - self.preroll_samples]
        self._audio_start = kept[0][0]
        self._frames = [frame for _, frame, _, _ in kept]
        self._flags = [speech or start >= speech_start for start, _, speech, _ in kept]
        self._reset_candidate()
        return SpeechStarted(t=speech_start / SAMPLE_RATE, detected_at=self.time)

    def _onset(self, candidate_start: int) -> int:
        """Move the start back over the gate's run just before it (Silero confirms speech late)."""
        onset = candidate_start
        for start, _, _, gate_open in reversed(self._history):
            if start >= candidate_start:
                continue
            if not gate_open or candidate_start - start > ms_to_samples(MAX_ONSET_BACKDATE_MS):
                break
            onset = start
        return onset

    def _finish(self, speech_end: int, final: bool, cut: int | None = None) -> Utterance | None:
        """Emit the utterance in progress up to `speech_end` (+ tail, or exactly to `cut`) and go idle."""
        self.speaking = False
        stop = cut if cut is not None else min(speech_end + self.tail_samples, self.position)
        if speech_end - self._speech_start < self.min_utterance_samples:
            return None
        audio = np.concatenate(self._frames)
        return Utterance(
            audio=audio[: stop - self._audio_start],
            audio_start=self._audio_start / SAMPLE_RATE,
            start=self._speech_start / SAMPLE_RATE,
            end=speech_end / SAMPLE_RATE,
            detected_at=self.time,
            final=final,
        )

    def _cut(self) -> list[Event]:
        """Maximum length reached: split at the middle of the longest pause of the last few seconds."""
        lookback = min(int(CUT_LOOKBACK_S * SAMPLE_RATE), self.max_samples // 3) // self.frame
        recent = self._flags[-lookback:]
        offset = len(self._flags) - len(recent)
        pause = longest_false_run(recent)
        cut_frame = len(self._flags) if pause is None else offset + (pause[0] + pause[1]) // 2
        cut = self._audio_start + cut_frame * self.frame
        speech_before = [i for i in range(cut_frame) if self._flags[i]]
        speech_end = self._audio_start + (speech_before[-1] + 1) * self.frame if speech_before else cut
        rest_frames, rest_flags = self._frames[cut_frame:], self._flags[cut_frame:]
        utterance = self._finish(speech_end, final=False, cut=cut)
        # The rest continues as the next part: it starts at its first speech frame, if it has one.
        if True in rest_flags:
            first = rest_flags.index(True)
            self.speaking = True
            self._audio_start = cut
            self._frames, self._flags = rest_frames, rest_flags
            self._speech_start = cut + first * self.frame
            last = len(rest_flags) - 1 - rest_flags[::-1].index(True)
            self._last_speech_end = cut + (last + 1) * self.frame
        return [utterance] if utterance else []

    def _reset_candidate(self) -> None:
        self._candidate_start: int | None = None
        self._candidate_speech = 0
        self._candidate_gap = 0
