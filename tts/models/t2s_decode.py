"""Decoding loops of the T2S model: the WebUI path, the parallel batch path and token streaming.

All three use the KV cache of `T2SModel` and the sampler of `sampling.py`, and follow the official
rules step by step (so seeded runs reproduce the official tokens):

* step 0 runs [text ; prompt] through the model; step t >= 1 feeds the token of step t-1 at audio
  position P + t - 1 (P = prompt length);
* for steps 0..10 the EOS column is dropped, so at least 11 tokens are generated;
* one sampling call (and one Exp(1) draw) per step, history = prompt + tokens so far;
* stop tests after appending the token: (a) early stop when more than `early_stop_num` tokens were
  generated, (b) EOS when the sampled token or the argmax of the penalised logits is EOS, (c) the
  step cap (1500 = 60 s).

The paths differ only in what they return: `SingleDecoder` (WebUI, `infer_panel_naive`) drops the
last token only on an EOS stop; `generate_batch` (TTS default, `infer_panel_batch_infer`) always
drops it. Callers synthesise `GenerationResult.semantic_tokens` (the last `idx` tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from agent.errors import KoeError
from tts.models.sampling import Sample, SamplingParams, sample
from tts.models.t2s import T2SModel, prefill_mask

MAX_STEPS = 1500  # official cap per call (60 s of audio at 25 tokens/s)
NO_EOS_STEPS = 11  # steps 0..10 cannot produce EOS
SEMANTIC_HZ = 50  # official callers use early_stop_num = 50 * max_sec
MUTE_TOKEN = 486  # the "silence" semantic token of every version


@dataclass
class StepRecord:
    """What one decoder step saw and chose (for tracing and parity checks)."""

    step: int
    logits: torch.Tensor  # [B, vocab] raw output-layer values, before any processing
    sample: Sample  # probabilities, Exp(1) draw and tokens ([B, 1024] for steps 0..10)
    greedy: torch.Tensor  # [B] argmax of the penalised logits (the EOS test looks at it)


OnStep = Callable[[StepRecord], None]


@dataclass
class GenerationResult:
    """The returned sequence of one item, as the official call returns it."""

    sequence: torch.Tensor  # [n] prompt + generated tokens, after the path's trimming
    idx: int  # step index the official call returns (0 without a prompt)
    eos_hit: bool  # stopped through the EOS rule
    num_steps: int  # decoder steps run
    prompt_len: int

    @property
    def semantic_tokens(self) -> torch.Tensor:
        """The tokens callers give to SoVITS: the last `idx` ones (all of them when idx = 0)."""
        return self.sequence[-self.idx :] if self.idx else self.sequence


@dataclass
class TokenChunk:
    """A piece of a streamed generation; `tokens` is None for an empty final chunk."""

    tokens: torch.Tensor | None  # [n] semantic tokens
    is_final: bool


def default_early_stop(model: T2SModel) -> int:
    return SEMANTIC_HZ * model.config.max_sec


def _choose(
    model: T2SModel, logits: torch.Tensor, history: torch.Tensor, step: int, params: SamplingParams, on_step
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row from logits [B, vocab]; returns (tokens [B], eos_stop [B] bool)."""
    raw = logits.clone() if on_step is not None else None
    if step < NO_EOS_STEPS:
        logits = logits[:, :-1]  # drop the EOS column (EOS is the last id)
    chosen = sample(logits, history, params)  # penalises `logits` in place
    greedy = logits.argmax(dim=-1)
    if on_step is not None:
        on_step(StepRecord(step, raw, chosen, greedy))
    eos = model.config.eos
    return chosen.tokens, (chosen.tokens == eos) | (greedy == eos)


def _buffer_steps(max_steps: int, early_stop_num: int) -> int:
    """Most tokens a call can append: the step cap, or early_stop_num + 1 when that comes first."""
    return max_steps if early_stop_num < 0 else min(max_steps, early_stop_num + 1)


def _check_inputs(phoneme_ids: torch.Tensor, bert_feature: torch.Tensor) -> None:
    if phoneme_ids.shape[-1] != bert_feature.shape[-1]:
        raise KoeError(
            f"phoneme ids ({phoneme_ids.shape[-1]}) and BERT features ({bert_feature.shape[-1]} frames) "
            "must have the same length"
        )


class SingleDecoder:
    """KV-cached decoding of one item (the WebUI path): call `advance()` until it returns True.

    phoneme_ids [1, Nx] (prompt phones + target phones), bert_feature [1, 1024, Nx], prompt [1, Np]
    semantic tokens or None (reference-free). Between steps the caller may stop at any time.
    """

    def __init__(
        self,
        model: T2SModel,
        phoneme_ids: torch.Tensor,
        bert_feature: torch.Tensor,
        prompt: torch.Tensor | None,
        params: SamplingParams,
        early_stop_num: int | None = None,
        max_steps: int = MAX_STEPS,
        on_step: OnStep | None = None,
    ):
        _check_inputs(phoneme_ids, bert_feature)
        if phoneme_ids.shape[0] != 1 or (prompt is not None and prompt.shape[0] != 1):
            raise KoeError(
                "SingleDecoder decodes one item: phoneme_ids [1, Nx] and prompt [1, Np]; use generate_batch"
            )
        device = model.ar_predict_layer.weight.device
        self.model, self.params, self.on_step, self.max_steps = model, params, on_step, max_steps
        self.early_stop_num = default_early_stop(model) if early_stop_num is None else early_stop_num
        self.prompt_len = 0 if prompt is None else prompt.shape[1]
        steps = _buffer_steps(max_steps, self.early_stop_num)
        self.tokens = torch.zeros(1, self.prompt_len + steps, dtype=torch.long, device=device)
        if prompt is not None:
            self.tokens[:, : self.prompt_len] = prompt
        self.length = self.prompt_len
        self.step = 0
        self.finished = False
        self.eos_hit = False
        self._text = (phoneme_ids.to(device), bert_feature.to(device))
        self._cache = model.new_cache(1, phoneme_ids.shape[1] + self.prompt_len + steps)

    @property
    def sequence(self) -> torch.Tensor:
        """[n] prompt + tokens kept so far."""
        return self.tokens[0, : self.length]

    @torch.no_grad()
    def advance(self) -> bool:
        """Run one decoder step; True once the generation has stopped."""
        if self.finished:
            raise RuntimeError("generation already finished")
        model, t, p = self.model, self.step, self.prompt_len
        if t == 0:
            text = model.embed_text(*self._text)  # [1, Nx, dim]
            xy = torch.cat([text, model.embed_audio(self.tokens[:, :p])], dim=1) if p else text
            logits = model.prefill(xy, prefill_mask(text.shape[1], p, xy.device), self._cache)
        else:
            x = model.embed_audio(self.tokens[:, self.length - 1 : self.length], start=p + t - 1)
            logits = model.decode_step(x, self._cache)
        token, eos_stop = _choose(model, logits, self.tokens[:, : self.length], t, self.params, self.on_step)
        self.tokens[:, self.length] = token
        self.length += 1

        early = self.early_stop_num != -1 and self.length - p > self.early_stop_num
        self.eos_hit = bool(eos_stop[0])
        if self.eos_hit:
            self.length -= 1  # the stopping token is not kept
        self.finished = early or self.eos_hit or t == self.max_steps - 1
        if self.finished and self.length == 0:
            self.tokens[:, 0] = 0  # official "bad zero prediction": never return an empty sequence
            self.length = 1
        self.step += 1
        return self.finished

    def result(self) -> GenerationResult:
        if not self.finished:
            raise RuntimeError("generation not finished")
        idx = self.step - 1 if self.prompt_len else 0
        return GenerationResult(self.sequence.clone(), idx, self.eos_hit, self.step, self.prompt_len)


def generate(
    model: T2SModel,
    phoneme_ids: torch.Tensor,
    bert_feature: torch.Tensor,
    prompt: torch.Tensor | None,
    params: SamplingParams,
    early_stop_num: int | None = None,
    max_steps: int = MAX_STEPS,
    on_step: OnStep | None = None,
) -> GenerationResult:
    """The WebUI path (`infer_panel_naive`) for one item; see `SingleDecoder` for the arguments."""
    decoder = SingleDecoder(
        model, phoneme_ids, bert_feature, prompt, params, early_stop_num, max_steps, on_step
    )
    while not decoder.advance():
        pass
    return decoder.result()


def generate_batch(
    model: T2SModel,
    phoneme_ids: list[torch.Tensor],
    bert_features: list[torch.Tensor],
    prompt: torch.Tensor | None,
    params: SamplingParams,
    early_stop_num: int | None = None,
    max_steps: int = MAX_STEPS,
    on_step: OnStep | None = None,
) -> list[GenerationResult]:
    """The parallel path (`infer_panel_batch_infer`): items decoded together, each removed when done.

    phoneme_ids: per item [Nx_i]; bert_features: per item [1024, Nx_i]; prompt: [Np] or [1, Np]
    tokens shared by every item, or None (then each item runs through `generate`, as upstream does).
    Text is left-padded to the longest item and the padded columns are masked. Every stop drops the
    last token of the sequence.
    """
    if len(phoneme_ids) != len(bert_features) or not phoneme_ids:
        raise KoeError(
            f"need one BERT feature per phoneme sequence (got {len(phoneme_ids)}/{len(bert_features)})"
        )
    if prompt is None:
        return [
            generate(model, ids[None], bert[None], None, params, early_stop_num, max_steps, on_step)
            for ids, bert in zip(phoneme_ids, bert_features)
        ]
    with torch.no_grad():
        return _BatchRun(
            model, phoneme_ids, bert_features, prompt, params, early_stop_num, max_steps, on_step
        ).run()


class _BatchRun:
    """State of one `generate_batch` call."""

    def __init__(self, model, phoneme_ids, bert_features, prompt, params, early_stop_num, max_steps, on_step):
        device = model.ar_predict_layer.weight.device
        self.model, self.params, self.on_step, self.max_steps = model, params, on_step, max_steps
        self.early_stop_num = default_early_stop(model) if early_stop_num is None else early_stop_num
        batch = len(phoneme_ids)
        if prompt.dim() == 2 and prompt.shape[0] != 1:
            raise KoeError(
                f"generate_batch shares one prompt between items: expected [Np] or [1, Np], got {list(prompt.shape)}"
            )
        prompt = prompt.reshape(1, -1).to(device)
        self.prompt_len = p = prompt.shape[1]

        texts = []
        for ids, bert in zip(phoneme_ids, bert_features):
            _check_inputs(ids, bert)
            texts.append(model.embed_text(ids.to(device)[None], bert.to(device)[None])[0])  # [Nx_i, dim]
        text_len = max(t.shape[0] for t in texts)
        text = torch.zeros(batch, text_len, texts[0].shape[1], dtype=texts[0].dtype, device=device)
        steps = _buffer_steps(max_steps, self.early_stop_num)
        key_ok = torch.ones(batch, text_len + p + steps, dtype=torch.bool, device=device)
        for i, t in enumerate(texts):
            text[i, text_len - t.shape[0] :] = t  # left padding
            key_ok[i, : text_len - t.shape[0]] = False
        self.key_ok = key_ok if not key_ok.all() else None  # [B, capacity], True = real column

        self.tokens = torch.zeros(batch, p + steps, dtype=torch.long, device=device)
        self.tokens[:, :p] = prompt
        self.xy = torch.cat([text, model.embed_audio(self.tokens[:, :p])], dim=1)  # [B, Nx + Np, dim]
        self.cache = model.new_cache(batch, text_len + p + steps)
        self.rows = list(range(batch))  # original item index of each active row

    def run(self) -> list[GenerationResult]:
        model, p = self.model, self.prompt_len
        results: list[GenerationResult | None] = [None] * len(self.rows)
        length = p
        for t in range(self.max_steps):
            if t == 0:
                allowed = prefill_mask(self.xy.shape[1] - p, p, self.xy.device)
                if self.key_ok is not None:
                    allowed = allowed & self.key_ok[:, None, None, : self.xy.shape[1]]
                logits = model.prefill(self.xy, allowed, self.cache)
            else:
                x = model.embed_audio(self.tokens[:, length - 1 : length], start=p + t - 1)
                allowed = None
                if self.key_ok is not None:
                    allowed = self.key_ok[:, None, None, : self.cache.length + 1]
                logits = model.decode_step(x, self.cache, allowed)
            tokens, eos_stop = _choose(model, logits, self.tokens[:, :length], t, self.params, self.on_step)
            self.tokens[:, length] = tokens
            length += 1

            early = self.early_stop_num != -1 and length - p > self.early_stop_num
            done = torch.ones_like(eos_stop) if early or t == self.max_steps - 1 else eos_stop
            for row in done.nonzero().flatten().tolist():
                sequence = self.tokens[row, : length - 1].clone()
                results[self.rows[row]] = GenerationResult(sequence, t, bool(eos_stop[row]), t + 1, p)
            if bool(done.all()):
                break
            if bool(done.any()):
                self._keep(torch.nonzero(~done).flatten())
        return results

    def _keep(self, keep: torch.Tensor) -> None:
        """Drop finished rows from the tokens, the cache and the padding mask."""
        self.rows = [self.rows[i] for i in keep.tolist()]
        self.tokens = self.tokens.index_select(0, keep)
        self.cache.select(keep)
        if self.key_ok is not None:
            self.key_ok = self.key_ok.index_select(0, keep)


def mute_token_similarity(model: T2SModel) -> torch.Tensor:
    """[vocab] float32 cosine similarity of every semantic-token embedding to the mute token 486."""
    table = model.ar_audio_embedding.word_embeddings.weight.detach().float()
    return torch.cosine_similarity(table[MUTE_TOKEN : MUTE_TOKEN + 1], table, dim=-1)


def stream(
    model: T2SModel,
    phoneme_ids: torch.Tensor,
    bert_feature: torch.Tensor,
    prompt: torch.Tensor | None,
    params: SamplingParams,
    chunk_length: int = 16,
    mute_similarity: torch.Tensor | None = None,
    threshold: float = 0.0,
    early_stop_num: int | None = None,
    max_steps: int = MAX_STEPS,
    on_step: OnStep | None = None,
    first_chunk_length: int | None = None,
) -> Iterator[TokenChunk]:
    """Streaming generation (`infer_panel_naive` with streaming_mode): yields token chunks as decoded.

    Fixed-length chunks of `chunk_length` tokens, or, with `mute_similarity` (see
    `mute_token_similarity`), silence-aware chunks that end after a run of mute-like tokens. As
    upstream, a silence-aware chunk carries every pending token but only advances past the split
    point, so later tokens come again in the next chunk. The last chunk has `is_final`. Closing the
    generator cancels the generation between two steps.

    `first_chunk_length` (koe's addition; None = the official behaviour) sends the first chunk as soon
    as that many tokens exist, in either mode, so the first audio starts earlier.
    """
    decoder = SingleDecoder(
        model, phoneme_ids, bert_feature, prompt, params, early_stop_num, max_steps, on_step
    )
    start = decoder.prompt_len  # first token not yet confirmed
    if mute_similarity is not None:
        mute_similarity = mute_similarity.to(decoder.tokens.device)
    first = first_chunk_length
    while not decoder.advance():
        pending = decoder.length - start
        if first is not None:
            if pending >= first:
                yield TokenChunk(decoder.sequence[start:].clone(), False)
                start, first = decoder.length, None
        elif mute_similarity is None:
            if pending >= chunk_length:
                yield TokenChunk(decoder.sequence[start:].clone(), False)
                start = decoder.length
        elif pending >= chunk_length + 2:
            split = _silence_split(mute_similarity, decoder.sequence[start:], threshold, chunk_length)
            if split is not None:
                yield TokenChunk(decoder.sequence[start:].clone(), False)
                start += split
    tail = decoder.sequence[start:].clone() if start < decoder.length else None
    yield TokenChunk(tail, True)


def _silence_split(similarity: torch.Tensor, pending: torch.Tensor, threshold: float, chunk_length: int):
    """Number of pending tokens up to the best mute pair, or None when no acceptable split exists."""
    score = similarity[pending] - threshold
    score[score < 0] = -1
    score[:-1] = score[:-1] + score[1:]
    best = int(torch.argmax(score))
    if score[best] >= 0 and best + 1 >= chunk_length:
        return best + 1
    return None
