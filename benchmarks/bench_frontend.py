"""Text frontend speed: first-call load time per language, then time per sentence after warm-up.

    .venv/bin/python benchmarks/bench_frontend.py [--repeats 5] [--bert-dir pretrained/chinese-roberta-wwm-ext-large]

Needs NLTK_DATA (English, Korean) and OPEN_JTALK_DICT_DIR (Japanese); the defaults point at the
shared test data. The language segmenter (split-lang + fastText) is loaded and timed first, so the
per-language numbers are the language's own resources.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("NLTK_DATA", str(ROOT.parent / "shared" / "data" / "nltk_data"))
os.environ.setdefault("OPEN_JTALK_DICT_DIR", "/var/lib/mecab/dic/open-jtalk/naist-jdic")

SENTENCES = {
    "all_zh": [
        "今天是2024年3月15日，星期五。",
        "这个月的销售额增长了23.5%，利润率为负数。",
        "我们一起去看一看吧，一定很有意思。",
        "银行的行长走在人行道上。",
        "我们去公园玩儿，买了一点儿花儿。",
    ],
    "en": [
        "Hello, world! This is a test.",
        "I'll be there at 10:30 tomorrow.",
        "The price is $19.99, not 25 pounds.",
        "NASA launched the rocket in 1969.",
        "The flibbertigibbet zorbulated the quantum widget.",
    ],
    "all_ja": [
        "こんにちは、今日はいい天気ですね。",
        "東京タワーに行きましょう！",
        "新幹線で大阪まで二時間半かかります。",
        "りんごを3個ください。",
        "本当に？それは知らなかった。",
    ],
    "all_ko": ["안녕하세요, 만나서 반갑습니다.", "오늘 날씨가 정말 좋네요!", "저는 사과를 3개 먹었어요."],
    "all_yue": ["佢個鋤頭太短啦。", "你食咗飯未呀？", "我哋聽日去飲茶。"],
    "zh": ["我今天用iPhone拍了一张照片。", "这个API的response time是200毫秒。"],
    "auto": ["今天天气很好。The weather is nice today.", "这是中文句子。"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over each language's sentences")
    parser.add_argument("--bert-dir", help="chinese-roberta-wwm-ext-large folder: include BERT features")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    from tts.text.frontend import TextFrontend
    from tts.text.lang_segment import split_languages

    frontend = TextFrontend(bert_dir=args.bert_dir)
    run = frontend.phones_and_bert if args.bert_dir else frontend.phones

    start = time.perf_counter()
    split_languages("hello 你好")
    print(f"language segmenter load: {time.perf_counter() - start:.2f} s")
    print(f"{'mode':8} {'first call (load) s':>20} {'ms / sentence':>14} {'phones / sentence':>18}")
    for mode, sentences in SENTENCES.items():
        start = time.perf_counter()
        run(sentences[0], mode, "v2")
        first = time.perf_counter() - start
        for sentence in sentences:  # warm-up: parts loaded lazily by later sentences (e.g. number words)
            run(sentence, mode, "v2")
        times, phones = [], 0
        for _ in range(args.repeats):
            for sentence in sentences:
                start = time.perf_counter()
                result = run(sentence, mode, "v2")
                times.append(time.perf_counter() - start)
                phones += len((result[0] if isinstance(result, tuple) else result).phone_ids)
        per_sentence = statistics.mean(times) * 1000
        print(f"{mode:8} {first:20.2f} {per_sentence:14.2f} {phones / len(times):18.1f}")


if __name__ == "__main__":
    main()
