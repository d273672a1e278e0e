"""Write a synthetic Whisper-layout `tokenizer.json` (HF `tokenizers` format) without any hub access.

256 byte tokens, filler tokens up to id 50255, the empty string at 50256 (CTranslate2 treats a model
whose vocabulary holds an empty-string token as multilingual), then Whisper's special tokens at their
usual ids: <|endoftext|>=50257, <|startoftranscript|>=50258, <|en|>=50259 ... <|su|>, <|translate|>,
<|transcribe|>, <|startoflm|>, <|startofprev|>, <|nospeech|>, <|notimestamps|>=50363, <|0.00|>=50364.
Good enough for random-weight test models (the text they produce is noise).

Usage: python whisper_tokenizer_json.py OUT.json
"""

from __future__ import annotations

import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# Whisper's language-token order (the 99 languages of the multilingual v1/v2 models).
LANGUAGE_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg "
    "lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so "
    "af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su"
).split()


def byte_alphabet() -> dict[int, str]:
    """Byte -> printable character, as byte-level BPE spells bytes (visible Latin-1 bytes map to themselves)."""
    visible = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in visible:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def special_tokens() -> tuple[list[str], list[str]]:
    head = ["<|endoftext|>", "<|startoftranscript|>"]
    languages = [f"<|{code}|>" for code in LANGUAGE_CODES]
    tail = [
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return head + languages + tail, timestamps


def build(out_path: str) -> Tokenizer:
    alphabet = byte_alphabet()
    vocab = {alphabet[b]: b for b in range(256)}
    vocab.update({f"~f{i}~": i for i in range(256, 50256)})
    vocab[""] = 50256
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    specials, timestamps = special_tokens()
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tokenizer.add_tokens([AddedToken(s, special=False, normalized=False) for s in timestamps])
    tokenizer.save(out_path)
    return tokenizer


if __name__ == "__main__":
    built = build(sys.argv[1])
    print("vocab size", built.get_vocab_size(), "notimestamps", built.token_to_id("<|notimestamps|>"))
