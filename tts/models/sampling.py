"""Token sampling for the T2S decoder, in the official order, so seeded sampling reproduces it.

Order: repetition penalty (in place, over the whole history including the prompt) -> top-p on the
untempered logits (the token that crosses the threshold is removed too, the best token always stays)
-> temperature -> top-k (ties at the k-th value survive) -> softmax -> exponential race
(argmax of probs / q with q ~ Exp(1), one draw of the probabilities' shape per call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agent.errors import KoeError


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; the API defaults of the official TTS class."""

    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise KoeError(f"top_k must be >= 1 (got {self.top_k}); use top_k=1 for greedy decoding")
        if not 0.0 < self.top_p <= 1.0:
            raise KoeError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.repetition_penalty <= 0:
            raise KoeError(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")


@dataclass
class Sample:
    """One sampling call: the chosen tokens and what produced them."""

    tokens: torch.Tensor  # [B] int64
    probs: torch.Tensor  # [B, V] after all filters
    noise: torch.Tensor  # [B, V] the Exp(1) draw


def apply_repetition_penalty_(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """In place: for each id in history [B, n], negative logits are multiplied by penalty, others divided."""
    if penalty == 1.0 or history.shape[1] == 0:
        return logits
    index = history.long()
    score = logits.gather(1, index)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter_(1, index, score)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Remove (-inf) every token whose cumulative probability, itself included, exceeds top_p; keep the best."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative > top_p
    remove_sorted[:, 0] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set values strictly below the k-th largest to -inf (k clipped to the vocabulary)."""
    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def logits_to_probs(logits: torch.Tensor, history: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities after penalty, top-p, temperature and top-k. The penalty modifies `logits` in place."""
    logits = apply_repetition_penalty_(logits, history, params.repetition_penalty)
    logits = top_p_filter(logits, params.top_p)
    logits = logits / max(params.temperature, 1e-5)
    logits = top_k_filter(logits, params.top_k)
    return torch.softmax(logits, dim=-1)


def exponential_race(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An exact categorical draw: argmax(probs / q), q ~ Exp(1) (one RNG call of probs' shape)."""
    noise = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / noise, dim=-1), noise


def sample(logits: torch.Tensor, history: torch.Tensor, params: SamplingParams) -> Sample:
    """logits [B, V] (penalised in place), history [B, n] token ids -> sampled tokens [B]."""
    probs = logits_to_probs(logits, history, params)
    tokens, noise = exponential_race(probs)
    return Sample(tokens, probs, noise)
