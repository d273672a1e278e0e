"""Mandarin tone sandhi on jieba words: 不 and 一 changes, neutral tones, third-tone changes.

Two stages, as in the official frontend (rules from PaddleSpeech): `pre_merge` glues jieba words so
that sandhi, which never crosses a word boundary, sees the right units (不怕, 看一看, 看看, 小老虎,
花儿); `modify_tones` then rewrites the tone digit of each syllable's final ("ao3" -> "ao2").
Merge decisions always use pypinyin finals.
"""

from __future__ import annotations

import logging
from functools import cache, lru_cache

from tts.text.symbols import load_table

log = logging.getLogger(__name__)

Word = list[str]  # [word, part-of-speech tag]

_SENTENCE_FINAL_PARTICLES = "吧呢哈啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶"


@cache
def _tables() -> dict:
    zh = load_table("frontend_tables.json")["zh"]
    return {
        "must_neutral": frozenset(zh["must_neural_tone_words"]),
        "must_not_neutral": frozenset(zh["must_not_neural_tone_words"]),
        "punctuation": zh["sandhi_punc"],
    }


def finals_tone3(word: str) -> list[str]:
    """pypinyin finals with tone digits, neutral tone as 5: 你好 -> ['i3', 'ao3']."""
    return list(_cached_finals(word))


@lru_cache(maxsize=1 << 16)
def _cached_finals(word: str) -> tuple[str, ...]:
    # pypinyin takes ~0.1 ms per call and words repeat a lot.
    from pypinyin import Style, lazy_pinyin

    return tuple(lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3))


def _set_tone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_tone_three(finals: list[str]) -> bool:
    return all(final[-1] == "3" for final in finals)


@cache
def jieba():
    """jieba_fast (what the official frontend uses); pure-Python jieba if it is not installed.

    jieba gives the same POS segmentation on tested text but its HMM cut of some unknown words
    differs, so parity needs jieba_fast.
    """
    try:
        import jieba_fast as module
        import jieba_fast.posseg  # noqa: F401
    except ImportError:
        import jieba as module
        import jieba.posseg  # noqa: F401

        log.warning("jieba_fast is not installed; using jieba, whose segmentation differs on rare words")
    module.setLogLevel(logging.WARNING)
    return module


@lru_cache(maxsize=1 << 16)
def split_word(word: str) -> tuple[str, str]:
    """Cut a word in two around its shortest search-mode sub-word (老虎 in 纸老虎 -> [纸, 老虎])."""
    shortest = sorted(jieba().cut_for_search(word), key=len)[0]
    if word.find(shortest) == 0:
        return shortest, word[len(shortest) :]
    return word[: -len(shortest)], shortest


# ---- pre-merge -------------------------------------------------------------------------------------


def _merge_bu(words: list[Word]) -> list[Word]:
    """A lone 不 joins the next word; a trailing lone 不 stays as an adverb."""
    merged: list[Word] = []
    previous = ""
    for word, pos in words:
        if previous == "不":
            word = previous + word
        if word != "不":
            merged.append([word, pos])
        previous = word
    if previous == "不":
        merged.append([previous, "d"])
    return merged


def _merge_yi(words: list[Word]) -> list[Word]:
    """'X 一 X' (verbs) becomes one word, then a lone 一 absorbs the following word.

    Indexing the output by the input position is the official behaviour: after an earlier merge it
    can pick another word or raise IndexError, in which case the caller keeps the unmerged list.
    """
    merged: list[Word] = []
    for i, (word, pos) in enumerate(words):
        if (
            0 < i < len(words) - 1
            and word == "一"
            and words[i - 1][0] == words[i + 1][0]
            and words[i - 1][1] == "v"
        ):
            merged[i - 1][0] = merged[i - 1][0] + "一" + merged[i - 1][0]
        elif i >= 2 and words[i - 1][0] == "一" and words[i - 2][0] == word and pos == "v":
            continue
        else:
            merged.append([word, pos])
    absorbed: list[Word] = []
    for word, pos in merged:
        if absorbed and absorbed[-1][0] == "一":
            absorbed[-1][0] += word
        else:
            absorbed.append([word, pos])
    return absorbed


def _merge_reduplication(words: list[Word]) -> list[Word]:
    merged: list[Word] = []
    for word, pos in words:
        if merged and word == merged[-1][0]:
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]


def _merge_three_tones(words: list[Word], whole_words: bool) -> list[Word]:
    """Glue neighbours that form a third-tone chain (at most 3 characters together).

    whole_words: both words entirely tone 3; otherwise the last syllable of the first and the first
    of the second.
    """
    finals = [finals_tone3(word) for word, _ in words]
    merged: list[Word] = []
    merged_into_previous = [False] * len(words)
    for i, (word, pos) in enumerate(words):
        if i > 0 and not merged_into_previous[i - 1]:
            if whole_words:
                chain = _all_tone_three(finals[i - 1]) and _all_tone_three(finals[i])
            else:
                chain = finals[i - 1][-1][-1] == "3" and finals[i][0][-1] == "3"
            previous = words[i - 1][0]
            if chain and not _is_reduplication(previous) and len(previous) + len(word) <= 3:
                merged[-1][0] += word
                merged_into_previous[i] = True
                continue
        merged.append([word, pos])
    return merged


def _merge_er(words: list[Word]) -> list[Word]:
    merged: list[Word] = []
    for i, (word, pos) in enumerate(words):
        if i > 0 and word == "儿" and words[i - 1][0] != "#":
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged


def _guarded(merge, words: list[Word], *args) -> list[Word]:
    """Some merges may fail on odd input; the official code then keeps the list unchanged."""
    try:
        return merge(words, *args)
    except (IndexError, KeyError):
        log.debug("%s failed; words kept unmerged", merge.__name__)
        return words


def pre_merge(words: list[tuple[str, str]]) -> list[Word]:
    """jieba (word, pos) pairs -> merged [word, pos] lists, in the official order."""
    merged = _merge_bu([[word, pos] for word, pos in words])
    merged = _guarded(_merge_yi, merged)
    merged = _merge_reduplication(merged)
    merged = _guarded(_merge_three_tones, merged, True)
    merged = _guarded(_merge_three_tones, merged, False)
    return _merge_er(merged)


# ---- tone changes ----------------------------------------------------------------------------------


def _bu_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 3 and word[1] == "不":  # 看不懂
        finals[1] = _set_tone(finals[1], "5")
        return finals
    for i, char in enumerate(word):
        if char == "不" and i + 1 < len(word) and finals[i + 1][-1] == "4":  # 不怕
            finals[i] = _set_tone(finals[i], "2")
    return finals


def _yi_sandhi(word: str, finals: list[str]) -> list[str]:
    if "一" in word and all(ch.isnumeric() for ch in word if ch != "一"):  # numbers: 一零零, 一百
        return finals
    if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:  # 看一看
        finals[1] = _set_tone(finals[1], "5")
    elif word.startswith("第一"):  # ordinal
        finals[1] = _set_tone(finals[1], "1")
    else:
        for i, char in enumerate(word):
            if char == "一" and i + 1 < len(word):
                if finals[i + 1][-1] == "4":  # 一段
                    finals[i] = _set_tone(finals[i], "2")
                elif word[i + 1] not in _tables()["punctuation"]:  # 一天
                    finals[i] = _set_tone(finals[i], "4")
    return finals


def _is_must_neutral(word: str) -> bool:
    must = _tables()["must_neutral"]
    return word in must or word[-2:] in must


def _neutral_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    must_not = _tables()["must_not_neutral"]
    for j in range(1, len(word)):  # reduplicated nouns, verbs, adjectives: 奶奶, 试试
        if word[j] == word[j - 1] and pos[0] in "nva" and word not in must_not:
            finals[j] = _set_tone(finals[j], "5")
    ge = word.find("个")
    last = word[-1] if word else ""
    if last and last in _SENTENCE_FINAL_PARTICLES or last and last in "的地得":
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) == 1 and word in "了着过" and pos in {"ul", "uz", "ug"}:
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) > 1 and last in "们子" and pos in {"r", "n"} and word not in must_not:
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) > 1 and last in "上下里" and pos in {"s", "l", "f"}:  # 桌上, 家里
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) > 1 and last in "来去" and word[-2] in "上下进出回过起开":  # 上来, 下去
        finals[-1] = _set_tone(finals[-1], "5")
    elif (ge >= 1 and (word[ge - 1].isnumeric() or word[ge - 1] in "几有两半多各整每做是")) or word == "个":
        finals[ge] = _set_tone(finals[ge], "5")
    elif _is_must_neutral(word):
        finals[-1] = _set_tone(finals[-1], "5")

    parts = split_word(word)
    halves = [finals[: len(parts[0])], finals[len(parts[0]) :]]
    for part, half in zip(parts, halves):
        if half and _is_must_neutral(part):
            half[-1] = _set_tone(half[-1], "5")
    return halves[0] + halves[1]


def _three_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 2 and _all_tone_three(finals):
        finals[0] = _set_tone(finals[0], "2")
    elif len(word) == 3:
        parts = split_word(word)
        if _all_tone_three(finals):
            if len(parts[0]) == 2:  # 蒙古/包
                finals[0] = _set_tone(finals[0], "2")
                finals[1] = _set_tone(finals[1], "2")
            elif len(parts[0]) == 1:  # 纸/老虎
                finals[1] = _set_tone(finals[1], "2")
        else:
            first, second = finals[: len(parts[0])], finals[len(parts[0]) :]
            for i, half in enumerate((first, second)):
                if len(half) == 2 and _all_tone_three(half):  # 所有/人
                    half[0] = _set_tone(half[0], "2")
                elif (
                    i == 1
                    and half
                    and not _all_tone_three(half)
                    and half[0][-1] == "3"
                    and first[-1][-1] == "3"
                ):
                    first[-1] = _set_tone(first[-1], "2")  # 好/喜欢
            finals = first + second
    elif len(word) == 4:  # idioms: two halves of two
        halves = [finals[:2], finals[2:]]
        for half in halves:
            if _all_tone_three(half):
                half[0] = _set_tone(half[0], "2")
        finals = halves[0] + halves[1]
    return finals


def modify_tones(word: str, pos: str, finals: list[str]) -> list[str]:
    """Apply 不, 一, neutral-tone and third-tone sandhi to one merged word's finals."""
    finals = _bu_sandhi(word, list(finals))
    finals = _yi_sandhi(word, finals)
    finals = _neutral_sandhi(word, pos, finals)
    return _three_sandhi(word, finals)
