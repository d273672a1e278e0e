"""g2pW input preparation and reading assembly, with a stand-in for the ONNX network (the real model
files are not available here) and a real BERT tokenizer made by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import KoeError
from tts.text.chinese import ChineseG2P
from tts.text.frontend import TextFrontend
from tts.text.g2pw import G2PW

POLYPHONIC = [("行", "ㄒㄧㄥ2"), ("行", "ㄏㄤ2"), ("長", "ㄓㄤ3"), ("長", "ㄔㄤ2")]
BOPOMOFO = {"ㄒㄧㄥ": "xing", "ㄏㄤ": "hang", "ㄓㄤ": "zhang", "ㄔㄤ": "chang", "ㄧㄣ": "yin"}


class PreferredReadings:
    """Stands in for the g2pW network: prefers one reading per character and checks its inputs."""

    def __init__(self, tokenizer, labels: list[str], chars: list[str], preferred: dict[str, str]):
        self.tokenizer, self.labels, self.chars, self.preferred = tokenizer, labels, chars, preferred
        self.calls = 0

    def run(self, _outputs, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        n = len(inputs["char_ids"])
        assert inputs["input_ids"].shape == inputs["attention_mask"].shape == inputs["token_type_ids"].shape
        probabilities = np.zeros((n, len(self.labels)), dtype=np.float32)
        for row in range(n):
            char = self.chars[inputs["char_ids"][row]]
            token = inputs["input_ids"][row, inputs["position_ids"][row]]
            # position_ids must point at the query character's token (CLS is position 0).
            assert self.tokenizer.convert_ids_to_tokens(int(token)) == char
            allowed = inputs["phoneme_mask"][row]
            assert {self.labels[i] for i in np.flatnonzero(allowed)} == {
                r for c, r in POLYPHONIC if c == char
            }
            probabilities[row, self.labels.index(self.preferred[char])] = 1.0
        return [probabilities]


@pytest.fixture(scope="module")
def g2pw(tmp_path_factory) -> G2PW:
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("g2pw")
    (folder / "g2pW.onnx").write_bytes(b"")  # never loaded: the session is replaced below
    (folder / "config.py").write_text("use_mask = True\nuse_char_phoneme = False\nwindow_size = None\n")
    (folder / "POLYPHONIC_CHARS.txt").write_text(
        "".join(f"{c}\t{r}\n" for c, r in POLYPHONIC), encoding="utf-8"
    )
    (folder / "MONOPHONIC_CHARS.txt").write_text("銀\tㄧㄣ2\n", encoding="utf-8")
    (folder / "bopomofo_to_pinyin_wo_tune_dict.json").write_text(
        __import__("json").dumps(BOPOMOFO, ensure_ascii=False), encoding="utf-8"
    )
    (folder / "polyphonic.rep").write_text("行长: ['hang2', 'zhang3']\n", encoding="utf-8")
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"銀行的長走在人道上,."]
    (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(tokenizer_dir / "vocab.txt")).save_pretrained(tokenizer_dir)
    model = G2PW(folder, tokenizer_dir)
    model.session = PreferredReadings(
        model.tokenizer, model.labels, model.chars, {"行": "ㄒㄧㄥ2", "長": "ㄔㄤ2"}
    )
    return model


def test_piece_readings_combine_model_monophonic_table_and_pypinyin(g2pw: G2PW) -> None:
    calls = g2pw.session.calls
    assert g2pw.piece_pinyin("银行的长道.") == ["yin2", "xing2", "de5", "chang2", "dao4", "."]
    assert g2pw.session.calls == calls + 1  # all queries of a piece in one run


def test_polyphone_dictionary_overrides_the_model_per_word(g2pw: G2PW) -> None:
    initials, finals = g2pw.word_syllables("行长", ["xing2", "chang2"])
    assert (initials, finals) == (["h", "zh"], ["ang2", "ang3"])


def test_chinese_g2p_uses_g2pw_readings(g2pw: G2PW) -> None:
    phones, word2ph = ChineseG2P(erhua=True, polyphones=g2pw)("人行道上.")
    assert phones[:4] == ["r", "en2", "x", "ing2"]
    assert len(word2ph) == 5 and sum(word2ph) == len(phones)


def test_missing_model_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(
        KoeError, match="g2pW.onnx, POLYPHONIC_CHARS.txt, MONOPHONIC_CHARS.txt.*koe models download g2pw"
    ):
        G2PW(tmp_path, tokenizer_dir=tmp_path)


@pytest.mark.parametrize("folder", ["empty", None])
def test_enabled_g2pw_without_files_falls_back_to_pypinyin(tmp_path: Path, caplog, folder) -> None:
    text = "银行的行长走在人行道上。"
    frontend = TextFrontend(use_g2pw=True, g2pw_dir=tmp_path if folder else None, bert_dir=tmp_path)
    with caplog.at_level("WARNING", logger="tts.text.frontend"):
        result = frontend.phones(text, "all_zh", "v2")
        frontend.phones(text, "all_zh", "v2")
    assert result.phone_ids == TextFrontend().phones(text, "all_zh", "v2").phone_ids
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "koe models download g2pw" in warnings[0] and "pypinyin" in warnings[0]


def test_v1_voices_never_use_g2pw(tmp_path: Path) -> None:
    frontend = TextFrontend(use_g2pw=True, g2pw_dir=tmp_path)
    assert frontend.phones("银行的行长走在人行道上。", "all_zh", "v1").phone_ids
