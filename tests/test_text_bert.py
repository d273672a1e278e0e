"""Chinese BERT features: layer choice, per-phone repetition, zeros for other languages, missing model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent.errors import KoeError
from tts.text.bert import ChineseBert, repeat_per_phone
from tts.text.frontend import TextFrontend

HIDDEN = 32


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random 4-layer BertForMaskedLM with a character vocabulary, saved like the real folder."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    chars = sorted(set("我用打电话你好世界今天天气很,.!?…-"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).eval().save_pretrained(folder)
    return folder


def test_features_are_third_last_hidden_state_repeated_per_phone(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer, BertForMaskedLM

    text, word2ph = "你好,世界.", [2, 2, 1, 2, 2, 1]
    features = ChineseBert(tiny_bert_dir)(text, word2ph)
    assert features.shape == (HIDDEN, sum(word2ph))

    model = BertForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    assert "[UNK]" not in tokenizer.tokenize(text)
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-3][0, 1:-1]
    # Character 0 covers phones 0-1, character 2 (",") phone 4 only.
    torch.testing.assert_close(features[:, 0], hidden[0])
    torch.testing.assert_close(features[:, 1], hidden[0])
    torch.testing.assert_close(features[:, 4], hidden[2])
    torch.testing.assert_close(features[:, 9], hidden[5])
    assert not torch.equal(hidden[0], hidden[1])


def test_int8_weights_stay_close_to_fp32_features(tiny_bert_dir: Path) -> None:
    """The fast modes' 8-bit BERT graph: really quantized (not identical), close in direction."""
    text, word2ph = "今天天气很好.", [2, 2, 2, 2, 2, 2, 1]
    exact = ChineseBert(tiny_bert_dir)(text, word2ph)
    frontend = TextFrontend(bert_dir=tiny_bert_dir, bert_weights="int8")
    assert frontend.bert.onnx.weights == "int8"
    fast = frontend.bert(text, word2ph)
    cosine = torch.cosine_similarity(exact, fast, dim=0)
    assert not torch.equal(exact, fast)
    assert float(cosine.min()) > 0.99


def test_unknown_bert_weight_format_is_a_clear_error(tiny_bert_dir: Path) -> None:
    with pytest.raises(KoeError, match="int4"):
        ChineseBert(tiny_bert_dir, weights="int4")


def test_repeat_per_phone_allows_zero_counts() -> None:
    chars = torch.arange(6.0).reshape(3, 2)
    out = repeat_per_phone(chars, [2, 0, 1])
    assert out.tolist() == [[0.0, 0.0, 4.0], [1.0, 1.0, 5.0]]


def test_phones_and_bert_zero_for_english_segment(tiny_bert_dir: Path) -> None:
    frontend = TextFrontend(bert_dir=tiny_bert_dir)
    result, bert = frontend.phones_and_bert("我用iPhone打电话。", "zh", "v2")
    assert bert.shape == (HIDDEN, len(result.phone_ids))
    langs = [seg.lang for seg in result.segments]
    assert langs == ["zh", "en", "zh"]
    n_first = len(result.segments[0].phones)
    n_english = len(result.segments[1].phones)
    assert torch.count_nonzero(bert[:, n_first : n_first + n_english]) == 0
    assert torch.count_nonzero(bert[:, :n_first]) > 0


def test_non_chinese_text_needs_no_bert() -> None:
    result, bert = TextFrontend(bert_dir=None).phones_and_bert("Hello there, my friend.", "en", "v2")
    assert bert.shape == (1024, len(result.phone_ids))
    assert torch.count_nonzero(bert) == 0


def test_missing_bert_folder_names_folder_and_download_command(tmp_path: Path) -> None:
    missing = tmp_path / "chinese-roberta-wwm-ext-large"
    with pytest.raises(KoeError, match="koe models download chinese-roberta-wwm-ext-large") as error:
        TextFrontend(bert_dir=missing).phones_and_bert("你好世界，今天天气很好。", "all_zh", "v2")
    assert str(missing) in str(error.value)


def test_unconfigured_bert_on_chinese_says_how_to_fetch() -> None:
    with pytest.raises(KoeError, match="koe models download chinese-roberta-wwm-ext-large"):
        TextFrontend().phones_and_bert("你好世界，今天天气很好。", "all_zh", "v2")
