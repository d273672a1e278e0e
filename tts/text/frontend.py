"""Per-sentence text frontend: text + language mode -> phone ids, word2ph, norm_text, BERT features.

This is what the TTS pipeline calls for every sentence (and for the prompt text), equivalent to the
official `get_phones_and_bert`: split into language segments by mode, clean each segment, map to ids,
BERT features for Mandarin segments (zeros elsewhere), and if the whole result has fewer than 6 phones
redo it once with "." in front.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from agent.errors import KoeError
from tts.text.bert import FEATURE_DIM, ChineseBert, zero_features
from tts.text.chinese import ChineseG2P
from tts.text.cleaner import clean_text
from tts.text.lang_segment import split_languages
from tts.text.symbols import phones_to_ids, table_version

log = logging.getLogger(__name__)

V1_LANGUAGES = ("auto", "en", "zh", "ja", "all_zh", "all_ja")
V2_LANGUAGES = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
# all_* modes: the language forced on every non-English part, and the label finally used.
_FORCED = {"all_zh": ("zh", "zh"), "all_yue": ("zh", "yue"), "all_ja": ("ja", "ja"), "all_ko": ("ko", "ko")}
MIN_PHONES = 6
_CONTROL_AS_SPACE = str.maketrans({"\t": " ", "\r": " ", "\x0b": " ", "\x0c": " "})


@dataclass
class CleanedSegment:
    lang: str
    text: str
    norm_text: str
    phones: list[str]
    word2ph: list[int] | None


@dataclass
class Phonemized:
    """Frontend output for one sentence."""

    phone_ids: list[int]
    phones: list[str]
    word2ph: list[int] | None  # only when every segment is zh or yue
    norm_text: str
    segments: list[CleanedSegment] = field(default_factory=list)
    message: str | None = None  # why nothing is spoken, when phone_ids is empty


def supported_languages(version: str) -> tuple[str, ...]:
    return V1_LANGUAGES if table_version(version) == "v1" else V2_LANGUAGES


def check_language(language: str, version: str) -> str:
    """The lower-cased mode, or a KoeError naming the supported ones."""
    mode = language.strip().lower()
    supported = supported_languages(version)
    if mode not in supported:
        raise KoeError(
            f"unknown text language {language!r} for a {version} voice; supported: {', '.join(supported)}"
        )
    return mode


def clean_control_characters(text: str) -> str:
    """Tabs and similar become spaces; other control/format characters (NUL, BEL, zero-width) go."""
    text = text.translate(_CONTROL_AS_SPACE)
    return "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf"))


def has_speakable_content(text: str) -> bool:
    """At least one letter, digit or ideograph (the check the sentence splitter also uses)."""
    return bool(re.sub(r"\W+", "", text).replace("_", ""))


class TextFrontend:
    """Holds the optional heavy parts (BERT, g2pW); languages load their resources on first use.

    bert_dir: folder of chinese-roberta-wwm-ext-large; needed only by `phones_and_bert` on Chinese.
    g2pw_dir: folder with the g2pW ONNX model; used when use_g2pw is true and its files are there,
    else pypinyin (official default is on, the parity fixtures were made with it off).
    detector_dir: folder that may hold fastText `lid.176.bin` for language ID (else the bundled small one).
    bert_weights: the BERT's CPU graph weights, "fp32" (exact) or "int8" (the fast T2S modes' choice).
    """

    def __init__(
        self,
        bert_dir: str | Path | None = None,
        use_g2pw: bool = False,
        g2pw_dir: str | Path | None = None,
        detector_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        bert_weights: str = "fp32",
    ) -> None:
        self.bert_dir = Path(bert_dir) if bert_dir else None
        self.bert_weights = bert_weights
        self.use_g2pw = use_g2pw
        self.g2pw_dir = Path(g2pw_dir) if g2pw_dir else None
        self.detector_dir = str(detector_dir) if detector_dir else None
        self.device = device
        # jieba, pyopenjtalk and the BERT are not safe to call from several threads at once.
        self._lock = threading.RLock()
        self._bert_sink: list | None = None

    @contextmanager
    def record_bert_inputs(self, sink: list | None):
        """While active, the tokenizer ids of every BERT call are appended to `sink` (parity traces)."""
        self._bert_sink = sink
        try:
            yield
        finally:
            self._bert_sink = None

    @cached_property
    def bert(self) -> ChineseBert:
        if self.bert_dir is None:
            raise KoeError(
                "Chinese text needs the BERT model but no folder is configured; "
                "fetch it with `koe models download chinese-roberta-wwm-ext-large`"
            )
        return ChineseBert(self.bert_dir, device=self.device, weights=self.bert_weights)

    @cached_property
    def _polyphones(self):
        """The g2pW model when enabled and its files are present, else None (pypinyin readings).

        An enabled g2pW whose files are missing falls back to pypinyin with one warning that names
        the missing files and the download command (the voice still speaks, polyphones may differ).
        """
        if not self.use_g2pw:
            return None
        from tts.text.g2pw import G2PW

        try:
            if self.g2pw_dir is None:
                raise KoeError("no g2pW model folder is set; fetch it with `koe models download g2pw`")
            return G2PW(self.g2pw_dir, tokenizer_dir=self.bert_dir)
        except KoeError as exc:
            log.warning("g2pW is on but cannot be used: %s. Chinese polyphones are read with pypinyin.", exc)
            return None

    def _chinese(self, version: str) -> ChineseG2P:
        # v1 voices never use g2pW and have no erhua step.
        if table_version(version) == "v1":
            return ChineseG2P(erhua=False)
        return ChineseG2P(erhua=True, polyphones=self._polyphones)

    def segments(self, text: str, mode: str) -> list[tuple[str, str]]:
        """(language, text) pairs for a mode, as the official per-mode segmentation."""
        if mode == "en":
            return [("en", text)]
        if mode in _FORCED:
            forced, label = _FORCED[mode]
            found = split_languages(text, forced, self.detector_dir)
            return [(label if seg.lang == forced else seg.lang, seg.text) for seg in found]
        found = split_languages(text, "", self.detector_dir)
        if mode in ("auto", "auto_yue"):
            return [
                ("yue" if seg.lang == "zh" and mode == "auto_yue" else seg.lang, seg.text) for seg in found
            ]
        # Mixed modes: English runs stay English, every other run is read as the mode's language.
        merged: list[list[str]] = []
        for seg in found:
            lang = "en" if seg.lang == "en" else mode
            if merged and merged[-1][0] == lang:
                merged[-1][1] += seg.text
            else:
                merged.append([lang, seg.text])
        return [(lang, part) for lang, part in merged]

    def phones(self, text: str, language: str, version: str = "v2") -> Phonemized:
        """Phone ids, word2ph and norm_text of one sentence (no BERT)."""
        mode = check_language(language, version)
        text = clean_control_characters(text)
        if not has_speakable_content(text):
            message = f"nothing to speak in {text[:40]!r}: no letters, digits or characters"
            log.info(message)
            return Phonemized([], [], None, "", [], message)
        with self._lock:
            result = self._phones(text, mode, version)
        if not result.phone_ids:
            result.message = f"no phones for {text[:40]!r} in language mode {mode!r}"
        return result

    def _phones(self, text: str, mode: str, version: str, retried: bool = False) -> Phonemized:
        text = re.sub(" {2,}", " ", text)
        cleaned = []
        for lang, part in self.segments(text, mode):
            chinese = self._chinese(version) if lang == "zh" else None
            seg = clean_text(part, lang, version, chinese=chinese)
            cleaned.append(CleanedSegment(lang, part, seg.norm_text, seg.phones, seg.word2ph))
        phones = [phone for seg in cleaned for phone in seg.phones]
        if not retried and len(phones) < MIN_PHONES:
            return self._phones("." + text, mode, version, retried=True)
        word2ph = None
        if cleaned and all(seg.word2ph is not None for seg in cleaned):
            word2ph = [count for seg in cleaned for count in seg.word2ph]
        norm_text = "".join(seg.norm_text for seg in cleaned)
        return Phonemized(phones_to_ids(phones, version), phones, word2ph, norm_text, cleaned)

    def phones_and_bert(
        self, text: str, language: str, version: str = "v2"
    ) -> tuple[Phonemized, torch.Tensor]:
        """Phones plus BERT features [1024, n_phones]: Mandarin segments from BERT, others zeros."""
        result = self.phones(text, language, version)
        features = []
        with self._lock:
            for seg in result.segments:
                if seg.lang == "zh" and seg.phones:
                    features.append(self.bert(seg.norm_text, seg.word2ph, self._bert_sink))
                else:
                    features.append(zero_features(len(seg.phones), self._feature_dim(result)))
        if not features:
            return result, zero_features(0)
        return result, torch.cat(features, dim=1)

    def _feature_dim(self, result: Phonemized) -> int:
        """1024 normally; the BERT's own width when it is loaded (tests use tiny models)."""
        if any(seg.lang == "zh" and seg.phones for seg in result.segments):
            return self.bert.dim
        return FEATURE_DIM
