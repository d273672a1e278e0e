"""The GPT-SoVITS text-to-semantic model ("T2S", "GPT"): phones + BERT features -> semantic tokens.

A decoder-only transformer over one sequence `[text ; audio]`: text positions see every text position
(and no audio), audio positions see all text and the audio before them. Post-norm layers, ReLU FFN
of width 4 x dim, no final norm, sinusoidal positions scaled by a learned `alpha` per stream (not by
sqrt(dim)). Module and parameter names equal the official state-dict keys (without the `model.`
prefix of the files), so a checkpoint loads with a plain strict `load_state_dict`.

Three entry points share the same layers: `forward_train` (teacher forcing, the training loss),
`prefill` (prompt pass that fills a preallocated `KVCache`) and `decode_step` (one new token against
the cache); `t2s_onnx.py` runs the last two through ONNX Runtime on the CPU. Decoding loops and
sampling live in `t2s_decode.py` and `sampling.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agent.errors import KoeError

BERT_DIM = 1024  # width of the phone-level BERT features (hard-coded in the official model)
POSITION_TABLE_LEN = 4000  # precomputed sinusoid rows per stream; longer inputs are computed on demand
LAYER_DROPOUT = 0.1  # attention / FFN / positional dropout of the official training code (fixed)
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class T2SConfig:
    """Architecture of a T2S model, as stored in a GPT checkpoint's `config["model"]`."""

    vocab_size: int = 1025  # 1024 semantic codes + EOS
    phoneme_vocab_size: int = 732  # 512 for v1 files
    dim: int = 512  # `embedding_dim` == `hidden_dim`
    num_heads: int = 16
    num_layers: int = 24
    eos: int = 1024
    embedding_dropout: float = 0.0  # `dropout`: token-embedding dropout (training only)
    max_sec: int = 54  # `config["data"]["max_sec"]`; callers use early_stop_num = 50 * max_sec

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return 4 * self.dim  # the official code ignores `linear_units`

    @classmethod
    def from_checkpoint_config(cls, config: dict) -> T2SConfig:
        """Read the architecture from a checkpoint's full training config (`model` and `data` sections)."""
        model = config.get("model") if isinstance(config, dict) else None
        if not isinstance(model, dict):
            raise KoeError("GPT checkpoint config has no 'model' section; expected the training config dict")
        required = (
            "vocab_size",
            "phoneme_vocab_size",
            "embedding_dim",
            "hidden_dim",
            "head",
            "n_layer",
            "EOS",
        )
        missing = [k for k in required if k not in model]
        if missing:
            raise KoeError(f"GPT checkpoint config['model'] lacks {missing}; present: {sorted(model)}")
        if model["embedding_dim"] != model["hidden_dim"]:
            raise KoeError(
                f"GPT checkpoint config has embedding_dim {model['embedding_dim']} != hidden_dim "
                f"{model['hidden_dim']}; the model needs them equal"
            )
        if model["hidden_dim"] % model["head"]:
            raise KoeError(f"GPT checkpoint config: hidden_dim {model['hidden_dim']} not divisible by head")
        data = config.get("data") or {}
        return cls(
            vocab_size=int(model["vocab_size"]),
            phoneme_vocab_size=int(model["phoneme_vocab_size"]),
            dim=int(model["hidden_dim"]),
            num_heads=int(model["head"]),
            num_layers=int(model["n_layer"]),
            eos=int(model["EOS"]),
            embedding_dropout=float(model.get("dropout", 0.0)),
            max_sec=int(data.get("max_sec", 54)),
        )

    def to_checkpoint_model_section(self) -> dict:
        """The `config["model"]` block the official training config carries for this architecture."""
        return {
            "vocab_size": self.vocab_size,
            "phoneme_vocab_size": self.phoneme_vocab_size,
            "embedding_dim": self.dim,
            "hidden_dim": self.dim,
            "head": self.num_heads,
            "linear_units": self.ffn_dim,
            "n_layer": self.num_layers,
            "dropout": self.embedding_dropout,
            "EOS": self.eos,
            "random_bert": 0,
        }


def sinusoid_table(start: int, length: int, dim: int) -> torch.Tensor:
    """Rows `start .. start+length-1` of the sin/cos table: pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i)."""
    cpu = torch.device("cpu")  # computed on the CPU even under a `torch.device(...)` context, then moved
    position = torch.arange(start, start + length, dtype=torch.float32, device=cpu).unsqueeze(1)  # [T, 1]
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=cpu) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=cpu)
    table[:, 0::2] = torch.sin(position * freqs)
    table[:, 1::2] = torch.cos(position * freqs)
    return table  # [T, dim]


class TokenEmbedding(nn.Module):
    """Embedding table (key `word_embeddings.weight`) with the official post-lookup dropout."""

    def __init__(self, vocab_size: int, dim: int, dropout: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.word_embeddings(ids))  # [B, T, dim]


class ScaledPositions(nn.Module):
    """Adds `alpha * sinusoid[position]`; the learned scalar `alpha` is the only parameter."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.dropout = nn.Dropout(LAYER_DROPOUT)
        self.register_buffer("table", sinusoid_table(0, POSITION_TABLE_LEN, dim), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        length, dim = x.shape[1], x.shape[2]
        if start + length <= self.table.shape[0]:
            pe = self.table[start : start + length]
        else:
            pe = sinusoid_table(start, length, dim).to(self.table.device)
        return self.dropout(x + self.alpha * pe.to(x.dtype))  # [B, T, dim]


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated once for the whole decode.

    keys, values: [layers, batch, heads, capacity, head_dim]; positions `0 .. length-1` are filled.
    Steps write in place; only finishing items of a batch shrink it (`select`).
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (items still decoding)."""
        self.keys = self.keys.index_select(1, rows)
        self.values = self.values.index_select(1, rows)


class SelfAttention(nn.Module):
    """Multi-head attention with the fused Q/K/V projection of the official layout (`in_proj_*`)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows: Q, K, V
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int | torch.Tensor = 0,
        dropout_p: float = 0.0,
    ) -> torch.Tensor:
        """x [B, T, dim]; attn_mask bool, True = may attend, broadcastable to [B, heads, T, S].

        With `cache` (this layer's keys/values [B, heads, capacity, head_dim]) the new keys/values are
        written at positions `start .. start+T-1` and the queries attend to positions `0 .. start+T-1`.
        `start` may be a device tensor of the T new positions instead: then the queries attend over
        the whole capacity (attn_mask covers it), the fixed shapes a CUDA graph replays.
        """
        batch, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, T, 3*dim]
        q, k, v = qkv.view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, hd]
        if cache is not None:
            cache_k, cache_v = cache
            if isinstance(start, torch.Tensor):
                cache_k.index_copy_(2, start, k)
                cache_v.index_copy_(2, start, v)
                k, v = cache_k, cache_v
            else:
                end = start + length
                cache_k[:, :, start:end] = k
                cache_v[:, :, start:end] = v
                k, v = cache_k[:, :, :end], cache_v[:, :, :end]  # [B, H, S, hd]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))  # [B, T, dim]


class TransformerLayer(nn.Module):
    """Post-norm layer: x = norm1(x + attn(x)); x = norm2(x + linear2(relu(linear1(x))))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(LAYER_DROPOUT)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        drop = LAYER_DROPOUT if self.training else 0.0
        x = self.norm1(x + self.dropout(self.self_attn(x, attn_mask, cache, start, drop)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(ffn))  # [B, T, dim]


class TransformerStack(nn.Module):
    """The layers (keys `h.layers.N.*`); no final norm."""

    def __init__(self, config: T2SConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(config.dim, config.num_heads, config.ffn_dim) for _ in range(config.num_layers)
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """With `cache`, x continues it at `cache.length` (which advances); or, with `positions` (a
        device tensor of x's positions), the fixed-shape form of `SelfAttention` that leaves
        `cache.length` to the caller."""
        start = positions if positions is not None else (cache.length if cache is not None else 0)
        for i, layer in enumerate(self.layers):
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            x = layer(x, attn_mask, layer_cache, start)
        if cache is not None and positions is None:
            cache.length = start + x.shape[1]
        return x


def prefill_mask(text_len: int, audio_len: int, device: torch.device | None = None) -> torch.Tensor:
    """[T, T] bool, True = may attend (T = text_len + audio_len).

    Text rows see all text columns and no audio; audio row j sees all text and audio columns <= j.
    """
    total = text_len + audio_len
    allowed = torch.ones(total, total, dtype=torch.bool, device=device).tril(diagonal=0)
    allowed[:, :text_len] = True
    allowed[:text_len, text_len:] = False
    return allowed


@dataclass
class TrainOutput:
    """Teacher-forced outputs; `loss_sum` is the official summed cross entropy (padding included)."""

    logits: torch.Tensor  # [B, Ny+1, vocab]
    targets: torch.Tensor  # [B, Ny+1]
    decoder_input: torch.Tensor  # [B, Ny] audio-stream input: semantic ids with EOS at padded positions
    loss_sum: torch.Tensor  # []
    top3_acc: torch.Tensor  # [] fraction of non-EOS targets among the 3 largest logits


class T2SModel(nn.Module):
    """Text-to-semantic decoder with the official state-dict layout."""

    def __init__(self, config: T2SConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.bert_proj = nn.Linear(BERT_DIM, dim)
        self.ar_text_embedding = TokenEmbedding(config.phoneme_vocab_size, dim, config.embedding_dropout)
        self.ar_text_position = ScaledPositions(dim)
        self.ar_audio_embedding = TokenEmbedding(config.vocab_size, dim, config.embedding_dropout)
        self.ar_audio_position = ScaledPositions(dim)
        self.h = TransformerStack(config)
        self.ar_predict_layer = nn.Linear(dim, config.vocab_size, bias=False)
        # The stack + output layer as an ONNX Runtime graph (`t2s_onnx.OnnxStack`), built per weights;
        # `prefill` and `decode_step` run through it where it applies.
        self.onnx_stack = None
        # On a GPU, `decode_step` as CUDA graph replays (`t2s_cuda_graph.CudaGraphDecodeStep`).
        self.cuda_graph = None

    # --- embeddings -------------------------------------------------------------------------------

    def embed_text(self, phoneme_ids: torch.Tensor, bert_feature: torch.Tensor) -> torch.Tensor:
        """phoneme_ids [B, Nx], bert_feature [B, 1024, Nx] -> [B, Nx, dim] (text positions from 0)."""
        bert = bert_feature.transpose(1, 2).to(self.bert_proj.weight.dtype)  # [B, Nx, 1024]
        x = self.ar_text_embedding(phoneme_ids) + self.bert_proj(bert)
        return self.ar_text_position(x)

    def embed_audio(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """tokens [B, T] at audio positions start .. start+T-1 -> [B, T, dim]."""
        return self.ar_audio_position(self.ar_audio_embedding(tokens), start)

    # --- training ---------------------------------------------------------------------------------

    def forward_train(
        self,
        phoneme_ids: torch.Tensor,
        phoneme_lens: torch.Tensor,
        semantic_ids: torch.Tensor,
        semantic_lens: torch.Tensor,
        bert_feature: torch.Tensor,
    ) -> TrainOutput:
        """The official teacher-forced forward (`forward_old`) on a right-padded batch.

        phoneme_ids [B, Nx], semantic_ids [B, Ny], bert_feature [B, 1024, Nx]. Reproduces the official
        key padding as it is: text columns are masked as if left-padded (the first Nx - len columns).
        """
        eos = self.config.eos
        batch, text_len = phoneme_ids.shape
        audio_len = semantic_ids.shape[1]
        device = phoneme_ids.device
        columns = torch.arange(audio_len + 1, device=device)
        audio_pad = columns.unsqueeze(0) >= semantic_lens.unsqueeze(1)  # [B, Ny+1], True = padding
        # targets: the ids with EOS at and beyond each row's length, one extra column (all EOS there);
        # the audio stream is fed targets[:, :-1], position j predicting targets[:, j+1].
        targets = F.pad(semantic_ids, (0, 1), value=0).masked_fill(audio_pad, eos)  # [B, Ny+1]
        decoder_input = targets[:, :audio_len]  # [B, Ny]
        xy = torch.cat([self.embed_text(phoneme_ids, bert_feature), self.embed_audio(decoder_input)], dim=1)
        text_pad = torch.arange(text_len, device=device).unsqueeze(0) < (text_len - phoneme_lens).unsqueeze(1)
        key_pad = torch.cat([text_pad, audio_pad[:, :audio_len]], dim=1)  # [B, Nx+Ny]
        allowed = prefill_mask(text_len, audio_len, device) & ~key_pad[:, None, None, :]  # [B, 1, T, T]

        hidden = self.h(xy, allowed)  # [B, Nx+Ny, dim]
        logits = self.ar_predict_layer(hidden[:, text_len - 1 :])  # [B, Ny+1, vocab]
        loss_sum = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
        return TrainOutput(logits, targets, decoder_input, loss_sum, top_k_accuracy(logits, targets, 3, eos))

    # --- inference --------------------------------------------------------------------------------

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty cache for `capacity` positions (text + prompt + every token to be generated)."""
        p = self.ar_predict_layer.weight
        shape = (self.config.num_layers, batch, self.config.num_heads, capacity, self.config.head_dim)
        return KVCache(
            torch.empty(shape, dtype=p.dtype, device=p.device),
            torch.empty(shape, dtype=p.dtype, device=p.device),
        )

    def prefill(self, xy: torch.Tensor, allowed: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run [text ; prompt] embeddings xy [B, T, dim] through every layer, filling `cache`.

        allowed: bool mask broadcastable to [B, heads, T, T]. Returns the logits of the last position [B, vocab].
        """
        if self._use_onnx(xy, cache):
            return self.onnx_stack(xy, cache, allowed)
        hidden = self.h(xy, allowed, cache)
        return self.ar_predict_layer(hidden[:, -1])

    def decode_step(
        self, x: torch.Tensor, cache: KVCache, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One new position x [B, 1, dim] against the cache -> logits [B, vocab].

        allowed: optional [B, 1, 1, cache.length + 1] mask (batched decoding with left-padded text).
        """
        if self._use_onnx(x, cache):
            return self.onnx_stack(x, cache, allowed)
        if self.cuda_graph is not None and not self.training and self.cuda_graph.supports(x, cache):
            return self.cuda_graph(x, cache, allowed)
        return self.torch_decode_step(x, cache, allowed)

    def torch_decode_step(
        self, x: torch.Tensor, cache: KVCache, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`decode_step` in eager torch (what the faster paths fall back to)."""
        hidden = self.h(x, allowed, cache)
        return self.ar_predict_layer(hidden[:, -1])

    def _use_onnx(self, x: torch.Tensor, cache: KVCache) -> bool:
        stack = self.onnx_stack
        if stack is None or self.training:
            return False
        if stack.supports(x, cache):
            return True
        if stack.released_torch_weights:
            raise KoeError("this T2S model runs only through its ONNX Runtime graph (CPU, fp32 inputs)")
        return False


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int, ignore_index: int) -> torch.Tensor:
    """Micro-averaged top-k accuracy over positions whose target is not `ignore_index` (0 if none)."""
    topk = logits.topk(k, dim=-1).indices  # [B, T, k]
    hit = (topk == targets.unsqueeze(-1)).any(-1)  # [B, T]
    keep = targets != ignore_index
    count = keep.sum()
    if count == 0:
        return torch.zeros((), dtype=torch.float32, device=logits.device)
    return (hit & keep).sum().float() / count.float()
