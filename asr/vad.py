"""Frame-level voice activity: is this frame speech?

Two detectors, usable alone or together (`[vad] engine`):
- webrtcvad: a cheap, precise frame gate on 30 ms frames. It also fires on steady noise.
- Silero (the ONNX model bundled inside faster-whisper, run with onnxruntime): a small LSTM that
  scores 32 ms windows; it rejects noise but reacts a window late.
With "both", a frame is speech when webrtcvad says so and Silero currently hears speech, so the
boundaries come from webrtcvad and the decision whether it is speech at all from Silero
(`gate_open` tells the endpointer where the webrtcvad run Silero confirmed began).
"""

from __future__ import annotations

import os

import numpy as np

from agent.config import VadConfig
from asr.audio import SAMPLE_RATE, float_to_pcm16

WEBRTC_FRAME_SAMPLES = 480  # 30 ms, the longest (most reliable) frame webrtcvad accepts
SILERO_WINDOW_SAMPLES = 512  # 32 ms, the window the 16 kHz Silero model is trained on
SILERO_CONTEXT_SAMPLES = 64  # samples of the previous window prepended to each input
SILERO_HYSTERESIS = 0.15  # once speaking, stay so until the probability drops this far below threshold


def silero_model_path() -> str:
    from faster_whisper.utils import get_assets_path

    return os.path.join(get_assets_path(), "silero_vad_v6.onnx")


class WebRtcGate:
    """webrtcvad on 10, 20 or 30 ms frames of float32 16 kHz audio."""

    def __init__(self, aggressiveness: int = 2) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: np.ndarray) -> bool:
        return self._vad.is_speech(float_to_pcm16(frame), SAMPLE_RATE)


class SileroVad:
    """Streaming Silero: feed frames of any length, read the probability of the latest 32 ms window."""

    def __init__(self, model_path: str | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(
            model_path or silero_model_path(), providers=["CPUExecutionProvider"], sess_options=options
        )
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)  # LSTM state carried from window to window
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(SILERO_CONTEXT_SAMPLES, np.float32)
        self._pending = np.zeros(0, np.float32)
        self.probability = 0.0

    def feed(self, audio: np.ndarray) -> float:
        """Score every complete window in `audio` (plus what was left over); return the latest score."""
        self._pending = np.concatenate([self._pending, audio])
        while len(self._pending) >= SILERO_WINDOW_SAMPLES:
            window, self._pending = (
                self._pending[:SILERO_WINDOW_SAMPLES],
                self._pending[SILERO_WINDOW_SAMPLES:],
            )
            model_input = np.concatenate([self._context, window])[None, :]  # (1, 576)
            probs, self._h, self._c = self._session.run(
                None, {"input": model_input, "h": self._h, "c": self._c}
            )
            self._context = window[-SILERO_CONTEXT_SAMPLES:]
            self.probability = float(probs.reshape(-1)[0])
        return self.probability


class SpeechDetector:
    """Per-frame speech decision for the configured engine; `frame_samples` is the frame it expects."""

    def __init__(self, engine: str = "both", aggressiveness: int = 2, silero_threshold: float = 0.5) -> None:
        if engine not in ("webrtc", "silero", "both"):
            raise ValueError(f"unknown VAD engine {engine!r} (expected webrtc, silero or both)")
        self.engine = engine
        self.frame_samples = SILERO_WINDOW_SAMPLES if engine == "silero" else WEBRTC_FRAME_SAMPLES
        self._webrtc = WebRtcGate(aggressiveness) if engine != "silero" else None
        self._silero = SileroVad() if engine != "webrtc" else None
        self._threshold = silero_threshold
        self._silero_active = False
        self.gate_open = False  # webrtcvad's verdict on the last frame (the speech verdict without it)

    @classmethod
    def from_config(cls, config: VadConfig) -> SpeechDetector:
        return cls(config.engine, config.webrtc_aggressiveness, config.silero_threshold)

    def reset(self) -> None:
        self._silero_active = False
        if self._silero is not None:
            self._silero.reset()

    def is_speech(self, frame: np.ndarray) -> bool:
        if self._silero is not None:
            probability = self._silero.feed(frame)
            off_threshold = self._threshold - SILERO_HYSTERESIS
            self._silero_active = probability >= (off_threshold if self._silero_active else self._threshold)
        self.gate_open = self._webrtc.is_speech(frame) if self._webrtc is not None else self._silero_active
        return self.gate_open and (self._silero is None or self._silero_active)
