"""Optional g2pW polyphone model (ONNX): picks the reading of characters like 行 / 长 from context.

The official v2 frontend uses it by default; koe turns it on only when asked and when its files are
present (the parity fixtures were made with it off). Needs onnxruntime, transformers (the BERT
tokenizer from chinese-roberta-wwm-ext-large) and opencc.

Model folder (the official G2PWModel): g2pW.onnx (or g2pw.onnx), config.py, POLYPHONIC_CHARS.txt,
MONOPHONIC_CHARS.txt, bopomofo_to_pinyin_wo_tune_dict.json; optionally polyphonic.rep and
polyphonic-fix.rep (GPT-SoVITS's word -> pinyin corrections, applied per jieba word).
"""

from __future__ import annotations

import ast
import json
import os
import re
from functools import cached_property
from pathlib import Path

import numpy as np

from agent.errors import KoeError
from tts.text.symbols import load_table

# Characters the official code never sends to the model (traditional forms: it runs on s2tw text).
_NOT_POLYPHONIC = frozenset("一不和咋嗲剖差攢倒難奔勁拗肖瘙誒泊听噢")
_NOT_MONOPHONIC = frozenset("似攢")
_WORD = re.compile(r"[a-zA-Z0-9]+|\S")
MAX_TOKENS = 512


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    """'char<TAB>bopomofo' lines."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            char, reading = line.split("\t")[:2]
            pairs.append((char, reading.strip()))
    return pairs


def _read_config(path: Path) -> dict:
    """Literal top-level assignments of the model's config.py, read without executing it."""
    config = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                config[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return config


def read_polyphone_dictionary(paths: list[Path]) -> dict[str, list[str]]:
    """'word: ['pin1', 'yin2']' lines; later files override earlier ones."""
    table: dict[str, list[str]] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            word, sep, readings = line.partition(":")
            if sep and word.strip():
                table[word.strip()] = ast.literal_eval(readings.strip())
    return table


class G2PW:
    """Pinyin for a Mandarin piece with g2pW deciding polyphonic characters."""

    def __init__(
        self, model_dir: str | Path, tokenizer_dir: str | Path | None, context_chars: int | None = None
    ):
        model_dir = Path(model_dir)
        onnx_files = [model_dir / name for name in ("g2pW.onnx", "g2pw.onnx") if (model_dir / name).is_file()]
        needed = ["POLYPHONIC_CHARS.txt", "MONOPHONIC_CHARS.txt", "bopomofo_to_pinyin_wo_tune_dict.json"]
        missing = [name for name in needed if not (model_dir / name).is_file()]
        if not onnx_files:
            missing.insert(0, "g2pW.onnx")
        if missing:
            raise KoeError(
                f"g2pW model folder {model_dir} lacks {', '.join(missing)}; fetch it with "
                "`koe models download g2pw` (or copy the official G2PWModel folder there), or turn g2pW "
                "off ([tts] g2pw = false: pypinyin readings)"
            )
        if tokenizer_dir is None or not Path(tokenizer_dir).is_dir():
            raise KoeError(
                f"g2pW needs the BERT tokenizer folder (got {tokenizer_dir}); "
                "fetch it with `koe models download chinese-roberta-wwm-ext-large`"
            )
        self.model_path = onnx_files[0]
        self.tokenizer_dir = Path(tokenizer_dir)
        if context_chars is None:
            context_chars = int(os.environ.get("g2pw_polyphonic_context_chars", "16"))
        self.context_chars = context_chars

        config = _read_config(model_dir / "config.py") if (model_dir / "config.py").is_file() else {}
        self.use_mask = bool(config.get("use_mask", True))
        use_char_phoneme = bool(config.get("use_char_phoneme", False))
        polyphonic = _read_pairs(model_dir / "POLYPHONIC_CHARS.txt")
        self.labels = sorted({f"{c} {r}" if use_char_phoneme else r for c, r in polyphonic})
        label_index = {label: i for i, label in enumerate(self.labels)}
        self.chars = sorted({c for c, _ in polyphonic})
        self.char_index = {c: i for i, c in enumerate(self.chars)}
        self.char_labels: dict[str, list[int]] = {}
        for c, r in polyphonic:
            self.char_labels.setdefault(c, []).append(label_index[f"{c} {r}" if use_char_phoneme else r])
        self.polyphonic = frozenset(self.chars) - _NOT_POLYPHONIC
        self.monophonic = {
            c: r for c, r in _read_pairs(model_dir / "MONOPHONIC_CHARS.txt") if c not in _NOT_MONOPHONIC
        }
        self.bopomofo_to_pinyin = json.loads(
            (model_dir / "bopomofo_to_pinyin_wo_tune_dict.json").read_text("utf-8")
        )
        dictionaries = [model_dir / name for name in ("polyphonic.rep", "polyphonic-fix.rep")]
        self.corrections = read_polyphone_dictionary([path for path in dictionaries if path.is_file()])

    @cached_property
    def session(self):
        import onnxruntime

        from tts.models.onnx_graph import session_options

        return onnxruntime.InferenceSession(
            str(self.model_path), session_options(), providers=["CPUExecutionProvider"]
        )

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.tokenizer_dir))

    @cached_property
    def _to_traditional(self):
        import opencc

        return opencc.OpenCC("s2tw")

    @cached_property
    def _to_simplified(self) -> dict[int, str]:
        return {ord(t): s for t, s in load_table("zh_t2s.json")["map"].items()}

    def _pinyin(self, bopomofo: str) -> str:
        """'ㄏㄤ2' -> 'hang2' (tone digit kept, 5 = neutral)."""
        label = bopomofo.split(" ")[-1]
        return self.bopomofo_to_pinyin.get(label[:-1], label[:-1]) + label[-1]

    def piece_pinyin(self, piece: str) -> list[str]:
        """TONE3 pinyin per character of piece (punctuation as itself)."""
        from pypinyin import Style, pinyin

        traditional = self._to_traditional.convert(piece)
        if len(traditional) != len(piece):
            traditional = piece
        simplified = traditional.translate(self._to_simplified)
        fallback = pinyin(simplified, style=Style.TONE3, neutral_tone_with_five=True)
        if len(fallback) != len(piece):  # one item per character is assumed; per character otherwise
            fallback = [pinyin(ch, style=Style.TONE3, neutral_tone_with_five=True)[0] for ch in simplified]
        readings = []
        queries = []
        for i, char in enumerate(traditional):
            if char in self.polyphonic:
                readings.append("")
                queries.append(i)
            elif char in self.monophonic:
                readings.append(self._pinyin(self.monophonic[char]))
            else:
                readings.append(fallback[i][0])
        if queries:
            for i, label in zip(queries, self._predict(traditional, queries)):
                readings[i] = self._pinyin(label)
        return readings

    def _predict(self, text: str, queries: list[int]) -> list[str]:
        """Model label for each query position (all queries share one cropped text)."""
        start = 0
        if self.context_chars > 0:
            start = max(0, queries[0] - self.context_chars)
            text = text[start : queries[-1] + self.context_chars + 1]
        text = text.lower()
        tokens, char_to_token = self._tokenize(text)
        ids = self.tokenizer.convert_tokens_to_ids(["[CLS]", *tokens, "[SEP]"])
        positions = [char_to_token[q - start] + 1 for q in queries]
        ids, positions = _window(ids, positions)
        n = len(queries)
        masks = np.ones((n, len(self.labels)), dtype=np.float32)
        if self.use_mask:
            masks[:] = 0
            for row, q in enumerate(queries):
                masks[row, self.char_labels[text[q - start]]] = 1
        inputs = {
            "input_ids": np.array([ids] * n, dtype=np.int64),
            "token_type_ids": np.zeros((n, len(ids)), dtype=np.int64),
            "attention_mask": np.ones((n, len(ids)), dtype=np.int64),
            "phoneme_mask": masks,
            "char_ids": np.array([self.char_index[text[q - start]] for q in queries], dtype=np.int64),
            "position_ids": np.array(positions, dtype=np.int64),
        }
        probabilities = self.session.run(None, inputs)[0]  # [n_queries, n_labels]
        return [self.labels[int(k)] for k in np.argmax(probabilities, axis=-1)]

    def _tokenize(self, text: str) -> tuple[list[str], list[int]]:
        """BERT tokens of the g2pW 'words' (alnum runs or single characters) and char -> token index."""
        tokens: list[str] = []
        char_to_token = [0] * len(text)
        for match in _WORD.finditer(text):
            pieces = self.tokenizer.tokenize(match.group())
            if not pieces or pieces == ["[UNK]"]:
                char_to_token[match.start() : match.end()] = [len(tokens)] * (match.end() - match.start())
                tokens.append("[UNK]")
                continue
            position = match.start()
            for piece in pieces:
                width = len(piece.removeprefix("##"))
                char_to_token[position : position + width] = [len(tokens)] * width
                tokens.append(piece)
                position += width
        return tokens, char_to_token

    def word_syllables(self, word: str, readings: list[str]) -> tuple[list[str], list[str]]:
        """Initials and toned finals of one jieba word, after the polyphone dictionary's corrections."""
        from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

        if word in self.corrections:
            readings = list(self.corrections[word])
        else:
            readings = [
                self.corrections[ch][0] if ch in self.corrections else r for ch, r in zip(word, readings)
            ]
        initials, finals = [], []
        for reading in readings:
            if reading[:1].isalpha():
                initials.append(to_initials(reading))
                finals.append(to_finals_tone3(reading, neutral_tone_with_five=True))
            else:
                initials.append(reading)
                finals.append(reading)
        return initials, finals


def _window(ids: list[int], positions: list[int]) -> tuple[list[int], list[int]]:
    """Keep at most 512 tokens, centred on the queries (only very long pieces need it)."""
    if len(ids) <= MAX_TOKENS:
        return ids, positions
    centre = (positions[0] + positions[-1]) // 2
    start = min(max(1, centre - (MAX_TOKENS - 2) // 2), len(ids) - 1 - (MAX_TOKENS - 2))
    body = ids[start : start + MAX_TOKENS - 2]
    return [ids[0], *body, ids[-1]], [p - start + 1 for p in positions]
