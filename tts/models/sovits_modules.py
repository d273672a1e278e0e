"""Building blocks of the SoVITS synthesizer: attention encoders, MRTE, style encoder, WaveNet, flow.

Module and parameter names follow the official GPT-SoVITS state-dict keys (`attn_layers.0.conv_q`,
`norm_layers_1.0.gamma`, `in_layers.0`, ...) so official weight files load without renaming.
Convolutions that the official code wraps in weight norm take `weight_norm=True` (keys `weight_g` /
`weight_v`, for training and for writing official files); inference models are built without it and
the loader folds the stored pairs into plain weights (tts/weights/sovits.py).

Shapes: B batch, C channels, T time. Masks are [B, 1, T] floats (1 = real frame).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from agent.errors import KoeError

RELATIVE_WINDOW = 4  # relative-position window of the text/SSL encoders (keys emb_rel_k/v [1, 9, k])


def with_weight_norm(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap `module` in the classic weight norm (keys `weight_g`, `weight_v`) when `enabled`."""
    if not enabled:
        return module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the classic API is the one with official key names
        return nn.utils.weight_norm(module)


def sequence_mask(lengths: torch.Tensor, max_length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B] lengths -> [B, 1, max_length] mask (1 = real frame)."""
    positions = torch.arange(max_length, device=lengths.device)
    return (positions[None, :] < lengths[:, None]).unsqueeze(1).to(dtype)


def gated_tanh(x: torch.Tensor, channels: int) -> torch.Tensor:
    """WaveNet gate: tanh(first half) * sigmoid(second half). [B, 2C, T] -> [B, C, T]."""
    return torch.tanh(x[:, :channels]) * torch.sigmoid(x[:, channels:])


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B, C, T] (keys `gamma`, `beta`)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, -1)  # [B, T, C]
        x = F.layer_norm(x, self.gamma.shape, self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


def relative_to_absolute(rel: torch.Tensor, window: int) -> torch.Tensor:
    """[..., T, 2w+1] scores per relative offset -> [..., T, T] with entry (i, j) = rel[i, j - i + w]
    for |j - i| <= w and 0 elsewhere."""
    t = rel.shape[-2]
    offset = torch.arange(t, device=rel.device)[None, :] - torch.arange(t, device=rel.device)[:, None]
    inside = (offset.abs() <= window).to(rel.dtype)  # [T, T]
    index = (offset.clamp(-window, window) + window).expand(*rel.shape[:-1], t)
    return torch.gather(rel, -1, index) * inside


def absolute_to_relative(p: torch.Tensor, window: int) -> torch.Tensor:
    """[..., T, T] attention weights -> [..., T, 2w+1] with entry (i, r) = p[i, i + r - w] (0 outside)."""
    t = p.shape[-1]
    column = (
        torch.arange(t, device=p.device)[:, None] + torch.arange(-window, window + 1, device=p.device)[None]
    )
    inside = ((column >= 0) & (column < t)).to(p.dtype)  # [T, 2w+1]
    index = column.clamp(0, t - 1).expand(*p.shape[:-1], 2 * window + 1)
    return torch.gather(p, -1, index) * inside


class MultiHeadAttention(nn.Module):
    """Multi-head attention with 1x1-conv projections, optionally with relative-position terms.

    With `window` set (the text/SSL encoders) one relative key/value table is shared by all heads:
    score(i, j) += q_i . Ek[j - i] and out_i += sum_j p_ij Ev[j - i] for |j - i| <= window.
    """

    def __init__(self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0, window=None):
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"attention width {channels} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_channels = channels // n_heads
        self.window = window
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        if window is not None:
            scale = self.head_channels**-0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window + 1, self.head_channels) * scale)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window + 1, self.head_channels) * scale)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape  # [B, C, T] -> [B, H, T, C/H]
        return x.view(b, self.n_heads, self.head_channels, t).transpose(2, 3)

    def forward(self, x: torch.Tensor, context: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, C, Tq] attends to context [B, C, Tk]; attn_mask [B, 1, Tq, Tk] (0 = blocked)."""
        q = self._split_heads(self.conv_q(x)) / math.sqrt(self.head_channels)  # [B, H, Tq, k]
        k = self._split_heads(self.conv_k(context))  # [B, H, Tk, k]
        v = self._split_heads(self.conv_v(context))
        scores = torch.matmul(q, k.transpose(-2, -1))  # [B, H, Tq, Tk]
        if self.window is not None:
            rel_logits = torch.matmul(q, self.emb_rel_k[0].transpose(0, 1))  # [B, H, Tq, 2w+1]
            scores = scores + relative_to_absolute(rel_logits, self.window)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = self.drop(F.softmax(scores, dim=-1))
        out = torch.matmul(p, v)  # [B, H, Tq, k]
        if self.window is not None:
            out = out + torch.matmul(absolute_to_relative(p, self.window), self.emb_rel_v[0])
        b, h, t, c = out.shape
        out = out.transpose(2, 3).reshape(b, h * c, t)  # [B, C, Tq]
        return self.conv_o(out)


class FeedForward(nn.Module):
    """conv(k) -> ReLU -> conv(k), "same" padding, masked before each conv."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0):
        super().__init__()
        self.padding = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(F.pad(x * mask, self.padding)))
        x = self.conv_2(F.pad(self.drop(x) * mask, self.padding))
        return x * mask


class AttentionEncoder(nn.Module):
    """Post-norm transformer encoder with relative-position self-attention and conv FFN."""

    def __init__(
        self,
        channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
    ):
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            MultiHeadAttention(channels, channels, n_heads, p_dropout, window=RELATIVE_WINDOW)
            for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FeedForward(channels, filter_channels, kernel_size, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * mask
        for attn, norm1, ffn, norm2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2
        ):
            x = norm1(x + self.drop(attn(x, x, attn_mask)))
            x = norm2(x + self.drop(ffn(x, mask)))
        return x * mask


class MRTE(nn.Module):
    """Multi-reference timbre encoder: content frames cross-attend to the text, plus the style vector.

    The official block fixes its width at 512 with 4 heads (keys `c_pre`, `text_pre`, `c_post`,
    `cross_attention.conv_*`).
    """

    HIDDEN = 512
    HEADS = 4

    def __init__(self, channels: int):
        super().__init__()
        self.cross_attention = MultiHeadAttention(self.HIDDEN, self.HIDDEN, self.HEADS)
        self.c_pre = nn.Conv1d(channels, self.HIDDEN, 1)
        self.text_pre = nn.Conv1d(channels, self.HIDDEN, 1)
        self.c_post = nn.Conv1d(self.HIDDEN, channels, 1)

    def forward(self, content, content_mask, text, text_mask, ge) -> torch.Tensor:
        """content [B, C, T], text [B, C, L], ge [B, 512, 1] or None -> [B, C, T]."""
        attn_mask = text_mask.unsqueeze(2) * content_mask.unsqueeze(-1)  # [B, 1, T, L]
        c = self.c_pre(content * content_mask)  # [B, 512, T]
        t = self.text_pre(text * text_mask)  # [B, 512, L]
        x = self.cross_attention(c * content_mask, t * text_mask, attn_mask) + c
        if ge is not None:
            x = x + ge
        return self.c_post(x * content_mask)


class TextEncoder(nn.Module):
    """`enc_p`: SSL content + phonemes -> prior statistics (m_p, logs_p) at 50 Hz."""

    SSL_DIM = 768

    def __init__(
        self, out_channels, channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout, n_symbols
    ):
        super().__init__()
        self.out_channels = out_channels
        half_depth = (channels, filter_channels, n_heads, n_layers // 2, kernel_size, p_dropout)
        self.ssl_proj = nn.Conv1d(self.SSL_DIM, channels, 1)
        self.encoder_ssl = AttentionEncoder(*half_depth)
        self.encoder_text = AttentionEncoder(
            channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout
        )
        self.text_embedding = nn.Embedding(n_symbols, channels)  # after encoder_text: official key order
        self.mrte = MRTE(channels)
        self.encoder2 = AttentionEncoder(*half_depth)
        self.proj = nn.Conv1d(channels, out_channels * 2, 1)
        self.onnx = None  # `encode` as an ONNX Runtime graph (text_encoder_onnx.py), used when set

    def encode(self, ssl, ssl_lengths, text, text_lengths, ge):
        """ssl [B, 768, T], text [B, L] ids, ge [B, 512, 1] -> hidden [B, C, T] and mask [B, 1, T]."""
        if self.onnx is not None and not self.training:
            if self.onnx.supports(ssl):
                return self.onnx(ssl, ssl_lengths, text, text_lengths, ge)
            if self.onnx.released_torch_weights:
                raise KoeError("this text encoder runs only through its ONNX Runtime graph (CPU, fp32 input)")
        ssl_mask = sequence_mask(ssl_lengths, ssl.shape[2], ssl.dtype)
        y = self.ssl_proj(ssl * ssl_mask) * ssl_mask
        y = self.encoder_ssl(y * ssl_mask, ssl_mask)
        text_mask = sequence_mask(text_lengths, text.shape[1], self.text_embedding.weight.dtype)
        t = self.text_embedding(text).transpose(1, 2)  # [B, C, L]
        t = self.encoder_text(t * text_mask, text_mask)
        y = self.mrte(y, ssl_mask, t, text_mask, ge)
        return self.encoder2(y * ssl_mask, ssl_mask), ssl_mask

    def prior(self, y, mask, speed: float = 1.0):
        """Hidden [B, C, T] -> (hidden, m, logs [B, out, T'], mask [B, 1, T']), T' = int(T / speed) + 1
        when speed != 1: the duration changes by resampling the 50 Hz latent linearly (pitch is kept)."""
        if speed != 1:
            y = F.interpolate(y, size=int(y.shape[-1] / speed) + 1, mode="linear")
            mask = F.interpolate(mask, size=y.shape[-1], mode="nearest")
        stats = self.proj(y) * mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return y, m, logs, mask

    def forward(self, ssl, ssl_lengths, text, text_lengths, ge, speed: float = 1.0):
        return self.prior(*self.encode(ssl, ssl_lengths, text, text_lengths, ge), speed)


def streaming_window(y, mask, keep_frames=None, overlap=None, drop_frames: int = 0):
    """Cut one streaming chunk out of the 50 Hz hidden sequence [B, C, T] (spec 4.8).

    Drops `drop_frames` trailing frames, keeps the last `keep_frames`, then crossfades the first F
    frames with `overlap` [B, C, F] (the previous chunk's tail): y[:F] = w[:F] y[:F] + w[F:] overlap
    with w[n] = sin(pi n / 2F), n = 0 .. 2F - 1 (rising, then falling).
    """
    if drop_frames:
        y, mask = y[..., :-drop_frames], mask[..., :-drop_frames]
    if keep_frames is not None:
        y, mask = y[..., -keep_frames:], mask[..., -keep_frames:]
    if overlap is not None:
        f = overlap.shape[-1]
        w = torch.sin(torch.pi * torch.arange(2 * f, device=y.device, dtype=y.dtype) / (2 * f))
        y = torch.cat([w[:f] * y[..., :f] + w[f:] * overlap, y[..., f:]], dim=-1)
    return y, mask


class _LinearNorm(nn.Module):
    """Linear layer stored under `.fc` (official key layout of the style encoder)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return self.fc(x)


class _ConvNorm(nn.Module):
    """ "Same"-padded Conv1d stored under `.conv` (official key layout of the style encoder)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x):
        return self.conv(x)


class _GLUConv(nn.Module):
    """Residual gated conv: x + a * sigmoid(b) with [a; b] = conv(x) (key `conv1.conv`)."""

    def __init__(self, channels: int, kernel_size: int, p_dropout: float):
        super().__init__()
        self.conv1 = _ConvNorm(channels, 2 * channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)
        self.channels = channels

    def forward(self, x):  # [B, C, T]
        h = self.conv1(x)
        return x + self.drop(h[:, : self.channels] * torch.sigmoid(h[:, self.channels :]))


class _StyleSelfAttention(nn.Module):
    """Self-attention of the style encoder; scores are divided by sqrt(model width), not sqrt(d_k)."""

    def __init__(self, n_heads: int, dim: int, p_dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.w_qs = nn.Linear(dim, dim)
        self.w_ks = nn.Linear(dim, dim)
        self.w_vs = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, dim)
        self.temperature = math.sqrt(dim)
        self.drop = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D]; pad [B, T] True at padded frames."""
        b, t, d = x.shape

        def heads(y):  # [B, T, D] -> [B, H, T, D/H]
            return y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        q, k, v = heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) / self.temperature  # [B, H, T, T]
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], -math.inf)
        out = torch.matmul(F.softmax(scores, dim=-1), v)  # [B, H, T, D/H]
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.drop(self.fc(out)) + x


class MelStyleEncoder(nn.Module):
    """`ref_enc`: linear spectrogram bins -> global style vector [B, out_dim, 1]."""

    HIDDEN = 128
    KERNEL = 5
    HEADS = 2

    def __init__(self, in_bins: int, out_dim: int, p_dropout: float = 0.1):
        super().__init__()
        h = self.HIDDEN
        self.spectral = nn.Sequential(
            _LinearNorm(in_bins, h),
            nn.Mish(),
            nn.Dropout(p_dropout),
            _LinearNorm(h, h),
            nn.Mish(),
            nn.Dropout(p_dropout),
        )
        self.temporal = nn.Sequential(
            _GLUConv(h, self.KERNEL, p_dropout), _GLUConv(h, self.KERNEL, p_dropout)
        )
        self.slf_attn = _StyleSelfAttention(self.HEADS, h, p_dropout)
        self.fc = _LinearNorm(h, out_dim)

    def forward(self, spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """spec [B, bins, T], mask [B, 1, T] -> [B, out_dim, 1] (masked mean over time)."""
        pad = mask[:, 0] == 0  # [B, T]
        x = self.spectral(spec.transpose(1, 2))  # [B, T, 128]
        x = self.temporal(x.transpose(1, 2)).transpose(1, 2)
        x = x.masked_fill(pad.unsqueeze(-1), 0)
        x = self.fc(self.slf_attn(x, pad))  # [B, T, out]
        # Masked time average, divided before summing and in float32 as the official code does.
        x = x.masked_fill(pad.unsqueeze(-1), 0).float()
        frames = (~pad).sum(dim=1)[:, None, None]
        return (x / frames).sum(dim=1).to(spec.dtype).unsqueeze(-1)


class WaveNet(nn.Module):
    """Non-causal WaveNet with gated tanh units and optional global conditioning (`WN`)."""

    def __init__(
        self, channels, kernel_size, dilation_rate, n_layers, gin_channels=0, p_dropout=0.0, weight_norm=False
    ):
        super().__init__()
        self.channels = channels
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.in_layers = nn.ModuleList()  # registered before cond_layer: the official key order
        self.res_skip_layers = nn.ModuleList()
        if gin_channels:
            self.cond_layer = with_weight_norm(
                nn.Conv1d(gin_channels, 2 * channels * n_layers, 1), weight_norm
            )
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation, padding=padding)
            self.in_layers.append(with_weight_norm(conv, weight_norm))
            res_skip = 2 * channels if i < n_layers - 1 else channels
            self.res_skip_layers.append(with_weight_norm(nn.Conv1d(channels, res_skip, 1), weight_norm))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, T], g [B, gin, 1] -> skip sum [B, C, T]."""
        out = torch.zeros_like(x)
        g_all = self.cond_layer(g) if g is not None else None  # [B, 2C * n_layers, 1]
        c = self.channels
        for i in range(self.n_layers):
            a = self.in_layers[i](x)
            if g_all is not None:
                a = a + g_all[:, 2 * c * i : 2 * c * (i + 1)]
            r = self.res_skip_layers[i](self.drop(gated_tanh(a, c)))
            if i < self.n_layers - 1:
                x = (x + r[:, :c]) * mask
                out = out + r[:, c:]
            else:
                out = out + r
        return out * mask


class WaveNetEncoder(nn.Module):
    """pre 1x1 conv -> WaveNet -> proj 1x1 conv (`enc_q` posterior encoder, v3/v4 `wns1`)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        channels,
        kernel_size,
        dilation_rate,
        n_layers,
        gin_channels=0,
        weight_norm=False,
    ):
        super().__init__()
        self.pre = nn.Conv1d(in_channels, channels, 1)
        self.enc = WaveNet(
            channels, kernel_size, dilation_rate, n_layers, gin_channels, weight_norm=weight_norm
        )
        self.proj = nn.Conv1d(channels, out_channels, 1)

    def forward(self, x, lengths, g=None):
        """x [B, in, T] -> (proj output [B, out, T], mask [B, 1, T])."""
        mask = sequence_mask(lengths, x.shape[2], x.dtype)
        h = self.enc(self.pre(x) * mask, mask, g=g)
        return self.proj(h) * mask, mask


class MeanOnlyCoupling(nn.Module):
    """Affine coupling with zero log-scale: the second half is shifted by a WaveNet of the first."""

    def __init__(
        self, channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels, weight_norm=False
    ):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden_channels, 1)
        self.enc = WaveNet(
            hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels, weight_norm=weight_norm
        )
        self.post = nn.Conv1d(hidden_channels, self.half, 1)

    def shift(self, x0, mask, g):
        h = self.enc(self.pre(x0) * mask, mask, g=g)
        return self.post(h) * mask

    def forward(self, x, mask, g=None, reverse=False):
        x0, x1 = x[:, : self.half], x[:, self.half :]
        m = self.shift(x0, mask, g)
        x1 = (x1 - m) * mask if reverse else m + x1 * mask
        return torch.cat([x0, x1], dim=1)


class Flip(nn.Module):
    """Reverse the channel order (its own inverse)."""

    def forward(self, x, mask, g=None, reverse=False):
        return torch.flip(x, [1])


class CouplingFlow(nn.Module):
    """`flow`: [coupling, flip] x n_flows; inference runs it in reverse (prior -> posterior latent)."""

    N_FLOWS = 4
    KERNEL = 5
    N_LAYERS = 4

    def __init__(self, channels, hidden_channels, gin_channels, weight_norm=False):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(self.N_FLOWS):
            self.flows.append(
                MeanOnlyCoupling(
                    channels, hidden_channels, self.KERNEL, 1, self.N_LAYERS, gin_channels, weight_norm
                )
            )
            self.flows.append(Flip())
        self.onnx = None  # the reverse direction as an ONNX Runtime graph (flow_onnx.py), used when set

    def forward(self, x, mask, g=None, reverse=False):
        if reverse and self.onnx is not None and not self.training:
            if self.onnx.supports(x) and g is not None:
                return self.onnx(x, mask, g)
            if self.onnx.released_torch_weights:
                raise KoeError(
                    "this flow runs only through its ONNX Runtime graph (CPU, fp32 input, a style vector g)"
                )
        for flow in reversed(self.flows) if reverse else self.flows:
            x = flow(x, mask, g=g, reverse=reverse)
        return x
