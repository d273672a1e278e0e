"""Phone-level BERT features for Mandarin text (chinese-roberta-wwm-ext-large).

Each character of norm_text gets the hidden state of transformer layer L-2 (hidden_states[-3]),
repeated word2ph[i] times, so the features line up with the phones: [hidden, n_phones]. Segments in
other languages get zeros of the same height (see `zero_features`). The last two layers never
matter, so they are not kept; on the CPU the others run as an ONNX Runtime graph (bert_onnx.py), in
fp32 (exact) or, for the fast T2S modes, with 8-bit weights.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from agent.errors import KoeError
from tts.memory import release_memory

log = logging.getLogger(__name__)

BERT_FOLDER = "chinese-roberta-wwm-ext-large"
FEATURE_DIM = 1024  # hidden size of chinese-roberta-wwm-ext-large
MAX_CHARS = 510  # 512 positions minus [CLS] and [SEP]
UNUSED_LAST_LAYERS = 2  # the features are hidden_states[-3]


def zero_features(n_phones: int, dim: int = FEATURE_DIM) -> torch.Tensor:
    return torch.zeros(dim, n_phones, dtype=torch.float32)


def repeat_per_phone(char_features: torch.Tensor, word2ph: list[int]) -> torch.Tensor:
    """[n_chars, hidden] -> [hidden, sum(word2ph)], row i repeated word2ph[i] times."""
    counts = torch.tensor(word2ph, dtype=torch.long, device=char_features.device)
    return torch.repeat_interleave(char_features, counts, dim=0).T


def copy_out_of_file_mapping(module: torch.nn.Module) -> None:
    """`from_pretrained` maps the weight file into memory, and tensors that still view it keep the whole
    mapping resident (1.3 GB for the large model, though the graph holds most weights): copies let it
    close."""
    for tensor in [*module.parameters(), *module.buffers()]:
        tensor.data = tensor.data.clone()
    release_memory()


class ChineseBert:
    """Loads the tokenizer and BertModel from a Hugging Face folder once; call it per segment.

    `weights`: the CPU graph's matrices, "fp32" (exact) or "int8" (about 2x faster, see bert_onnx.py).
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype=torch.float32,
        weights: str = "fp32",
    ) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise KoeError(
                f"BERT model folder {model_dir} is missing or has no config.json; Chinese text needs it. "
                f"Fetch it with `koe models download {BERT_FOLDER}`."
            )
        from transformers import AutoTokenizer, BertModel

        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        with torch.random.fork_rng(devices=[]):  # loading may draw init noise; seeded runs must not see it
            self.model = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False)
        layers = self.model.encoder.layer
        self.model.encoder.layer = layers[: len(layers) - UNUSED_LAST_LAYERS]
        self.model.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dim = self.model.config.hidden_size
        self.onnx = None
        if self.device.type == "cpu" and dtype == torch.float32:
            from tts.text.bert_onnx import OnnxBertEncoder

            self.onnx = OnnxBertEncoder(self.model, weights)
            copy_out_of_file_mapping(self.model)
        log.info("BERT loaded in %.1f s", time.perf_counter() - started)

    @torch.inference_mode()
    def char_features(self, text: str, sink: list | None = None) -> torch.Tensor:
        """[len(text), hidden] float32 on CPU; texts over 510 characters run in 510-character windows.

        `sink`, when given, receives the tokenizer ids of every model call (for parity traces).
        """
        windows = [text[i : i + MAX_CHARS] for i in range(0, len(text), MAX_CHARS)]
        features = []
        for window in windows:
            inputs = self.tokenizer(window, return_tensors="pt").to(self.device)
            if sink is not None:
                sink.append(inputs["input_ids"][0].tolist())
            n_tokens = inputs["input_ids"].shape[1] - 2
            if n_tokens != len(window):
                raise KoeError(
                    f"the BERT tokenizer split {window!r} into {n_tokens} tokens, expected one per character "
                    f"({len(window)}); use the {BERT_FOLDER} tokenizer"
                )
            hidden = self._last_kept_layer(inputs)  # [1, T+2, H]
            features.append(hidden[0, 1:-1].float().cpu())
        return torch.cat(features) if features else torch.zeros(0, self.dim)

    def _last_kept_layer(self, inputs) -> torch.Tensor:
        if self.onnx is None:
            return self.model(**inputs).last_hidden_state
        embeddings = self.model.embeddings(
            input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"]
        )
        return self.onnx(embeddings)

    def __call__(self, norm_text: str, word2ph: list[int], sink: list | None = None) -> torch.Tensor:
        """[hidden, n_phones] features of a Mandarin segment."""
        if len(word2ph) != len(norm_text):
            raise ValueError(f"word2ph has {len(word2ph)} entries for {len(norm_text)} characters")
        return repeat_per_phone(self.char_features(norm_text, sink), word2ph)
