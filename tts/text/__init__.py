"""Text frontend: sentences -> phone ids, word2ph and BERT features, as the official GPT-SoVITS frontend.

    frontend = TextFrontend(bert_dir="pretrained/chinese-roberta-wwm-ext-large")
    for sentence in split_sentences(text, "zh", "cut5"):
        result, bert = frontend.phones_and_bert(sentence, "zh", version="v2")

Heavy resources (jieba dictionary, pyopenjtalk, g2p_en, BERT) load on first use of their language.
"""

from tts.text.frontend import Phonemized, TextFrontend, check_language, supported_languages
from tts.text.split import CUT_METHODS, split_sentences
from tts.text.symbols import phones_to_ids, symbols

__all__ = [
    "CUT_METHODS",
    "Phonemized",
    "TextFrontend",
    "check_language",
    "phones_to_ids",
    "split_sentences",
    "supported_languages",
    "symbols",
]
