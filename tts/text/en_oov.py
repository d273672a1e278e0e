"""Pronunciation of English words missing from every dictionary: g2p_en's neural model, in numpy.

The weights (`checkpoint20.npz`, Apache-2.0) and the homograph list come with the g2p_en wheel. We
read them from the installed package without importing `g2p_en` itself, because that import tries
to download NLTK data from the internet and builds an unused copy of the CMU dictionary.

Model: characters a-z embedded, a GRU encoder, and a GRU decoder that starts from `<s>` with the
encoder's last state and picks the most likely phone greedily, for at most 20 steps. The arithmetic
follows g2p_en operation by operation (float32), so the predictions are the same.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

from agent.errors import KoeError

GRAPHEMES = ["<pad>", "<unk>", "</s>", *"abcdefghijklmnopqrstuvwxyz"]
# The output vocabulary: four specials, then the 70 ARPAbet phones in code-point order (a bare "UW"
# included, which the frontend drops afterwards).
_ARPABET = (
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 "
    "ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 P R "
    "S SH T TH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
).split()
PHONEMES = ["<pad>", "<unk>", "<s>", "</s>", *_ARPABET]
_START, _END = PHONEMES.index("<s>"), PHONEMES.index("</s>")
_MAX_STEPS = 20


def g2p_en_dir() -> Path:
    """The installed g2p_en package folder (found without running its __init__)."""
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        raise KoeError("the English frontend needs the g2p_en package: pip install 'g2p_en==2.1.0'")
    return Path(list(spec.submodule_search_locations)[0])


def load_homographs() -> dict[str, tuple[list[str], list[str], str]]:
    """g2p_en's homographs.en: word -> (pronunciation 1, pronunciation 2, POS tag choosing 1)."""
    homographs = {}
    for line in (g2p_en_dir() / "homographs.en").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        word, first, second, pos = line.strip().split("|")
        homographs[word.lower()] = (first.split(), second.split(), pos)
    return homographs


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _gru_cell(x: np.ndarray, h: np.ndarray, w_ih, w_hh, b_ih, b_hh) -> np.ndarray:
    """One GRU step, gates in PyTorch order (r, z, n). x: [1, E], h: [1, H] -> [1, H]."""
    gates_x = np.matmul(x, w_ih.T) + b_ih  # [1, 3H]
    gates_h = np.matmul(h, w_hh.T) + b_hh  # [1, 3H]
    split = gates_x.shape[-1] * 2 // 3
    r, z = np.split(_sigmoid(gates_x[:, :split] + gates_h[:, :split]), 2, -1)
    n = np.tanh(gates_x[:, split:] + r * gates_h[:, split:])
    return (1 - z) * n + z * h


class OovModel:
    """Greedy character-to-phone prediction for one lower-case word."""

    def __init__(self, weights_path: Path | None = None):
        path = weights_path or g2p_en_dir() / "checkpoint20.npz"
        with np.load(path) as weights:  # plain arrays; allow_pickle stays off
            self.w = {name: weights[name] for name in weights.files}
        self._grapheme_ids = {g: i for i, g in enumerate(GRAPHEMES)}

    def predict(self, word: str) -> list[str]:
        w = self.w
        ids = [self._grapheme_ids.get(c, 1) for c in [*word, "</s>"]]  # 1 = <unk>
        embedded = np.take(w["enc_emb"], np.expand_dims(ids, 0), axis=0)  # [1, T, E]
        h = np.zeros((1, w["enc_w_hh"].shape[-1]), np.float32)  # [1, H]
        for t in range(len(ids)):
            h = _gru_cell(embedded[:, t, :], h, w["enc_w_ih"], w["enc_w_hh"], w["enc_b_ih"], w["enc_b_hh"])
        # The encoder writes its states into a float32 buffer; the decoder starts from that copy.
        h = h.astype(np.float32)

        previous = np.take(w["dec_emb"], [_START], axis=0)  # [1, E]
        phones = []
        for _ in range(_MAX_STEPS):
            h = _gru_cell(previous, h, w["dec_w_ih"], w["dec_w_hh"], w["dec_b_ih"], w["dec_b_hh"])
            best = int((np.matmul(h, w["fc_w"].T) + w["fc_b"]).argmax())
            if best == _END:
                break
            phones.append(PHONEMES[best] if best < len(PHONEMES) else "<unk>")
            previous = np.take(w["dec_emb"], [best], axis=0)
        return phones


@cache
def oov_model() -> OovModel:
    """The model, loaded once."""
    return OovModel()
