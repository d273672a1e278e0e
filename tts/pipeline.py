"""The official GPT-SoVITS synthesis pipeline (`TTS.run`), step for step, on koe's own models.

`TTSPipeline.run(params)` takes exactly the request dict of the official `TTS.run` (and of api_v2's
/tts) and yields `(sample_rate, int16 audio)` pieces like the official generator: once for a whole
text, per batch with `return_fragment`, per token chunk with `streaming_mode`. Spec sections 6.1-6.9.

The order of random draws is part of the contract (spec 6.8): seed everything, make up the HuBERT
layer-drop draws when the reference changes, then per batch the T2S sampling followed by the SoVITS
noise. That is what makes seeded output identical to the official code's.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from agent.errors import KoeError
from tts.memory import trim_heap
from tts.models.sampling import SamplingParams
from tts.models.t2s_decode import generate, generate_batch, mute_token_similarity, stream
from tts.reference import ReferenceProcessor, SpeakerEncoder

log = logging.getLogger(__name__)

SPLITS = set("，。？！,.?!~:：—…")
TOKEN_SAMPLES = 1280  # 32 kHz samples per semantic token (v1/v2/Pro)
LANGUAGES_V1 = ("auto", "en", "zh", "ja", "all_zh", "all_ja")
LANGUAGES_V2 = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
SPLIT_METHODS = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")


@dataclass
class RunParams:
    """The official `TTS.run` inputs with their `run()` defaults (api_v2 overrides some, spec 6.1)."""

    text: str = ""
    text_lang: str = ""
    ref_audio_path: str = ""
    aux_ref_audio_paths: list[str] = field(default_factory=list)
    prompt_text: str = ""
    prompt_lang: str = ""
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    text_split_method: str = "cut1"
    batch_size: int = 1
    batch_threshold: float = 0.75
    split_bucket: bool = True
    speed_factor: float = 1.0
    fragment_interval: float = 0.3
    seed: int = -1
    parallel_infer: bool = True
    repetition_penalty: float = 1.35
    sample_steps: int = 32
    super_sampling: bool = False
    return_fragment: bool = False
    streaming_mode: bool = False
    overlap_length: int = 2
    min_chunk_length: int = 16
    fixed_length_chunk: bool = False
    # koe: send the first chunk after this many tokens (None = the official chunking)
    first_chunk_length: int | None = None

    @classmethod
    def from_dict(cls, params: dict) -> RunParams:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in known and v is not None}
        values["aux_ref_audio_paths"] = list(values.get("aux_ref_audio_paths") or [])
        return cls(**values)


@dataclass
class PipelineTrace:
    """What one `run()` computed on the way, for parity checks and debugging."""

    prompt_phones: list[int] = field(default_factory=list)
    prompt_semantic: torch.Tensor | None = None
    segments: dict[int, dict] = field(default_factory=dict)  # index -> phones, bert, semantic
    bert_input_ids: list[list[int]] = field(default_factory=list)
    stream_tokens: list[torch.Tensor | None] = field(default_factory=list)


@dataclass
class Sentence:
    """One piece of target text after splitting, with its phones and BERT features."""

    index: int
    text: str
    phones: list[int]
    bert: torch.Tensor  # [1024, n_phones]
    norm_text: str


class SynthesisStopped(Exception):
    """Raised inside the decoder loops when `stop()` was called; ends `run()` quietly."""


def set_seed(seed: int) -> int:
    """Seed Python, NumPy and torch as the official `set_seed` does; -1 picks a random seed."""
    if seed in (-1, None, ""):
        seed = random.randint(0, 2**32 - 1)
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def bucket_batches(
    lengths: list[int], batch_size: int, threshold: float, split_bucket: bool
) -> list[list[int]]:
    """Group sentence indices into T2S batches (spec 6.5 `to_batch`)."""
    order = list(range(len(lengths)))
    if not split_bucket:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order.sort(key=lambda i: lengths[i])
    batches, pos = [], 0
    while pos < len(order):
        size = min(batch_size, len(order) - pos)
        while size > 1:
            window = [lengths[i] for i in order[pos : pos + size]]
            if window[size // 2] / (sum(window) / size) >= threshold:
                break
            size -= 1
        batches.append(order[pos : pos + size])
        pos += size
    return batches


def _sampling(p: RunParams) -> SamplingParams:
    return SamplingParams(p.top_k, p.top_p, p.temperature, p.repetition_penalty)


def load_speaker_encoder(sv_path: str | Path | None, device: str | torch.device = "cpu") -> SpeakerEncoder:
    """The v2Pro speaker-verification model as a callable 16 kHz [1, N] -> [1, 20480]."""
    from tts.models.sv import load_sv_model, speaker_embedding

    if sv_path is None:
        raise KoeError(
            "SoVITS v2Pro/v2ProPlus voices need the speaker model sv/pretrained_eres2netv2w24s4ep4.ckpt; "
            "fetch it with `koe models download gsv-v2pro`"
        )
    model = load_sv_model(sv_path).to(device)
    return lambda audio16: speaker_embedding(model, audio16.to(device))


T2S_PRECISIONS = ("fp32", "int8", "int4", "fp16", "bf16")
QUANTIZED_PRECISIONS = ("int8", "int4")  # CPU only: quantized ONNX Runtime weights


def load_t2s(path: str | Path, device: str | torch.device, precision: str = "fp32"):
    """GPT weights in the chosen precision, with the fastest decode step for it.

    fp32 is exact: on the CPU the stack runs through ONNX Runtime with the same fp32 numbers (the
    parity tests run both). int8 and int4 (CPU only) give that graph quantized weights: int8 reads a
    quarter of the bytes a token reads and runs the prompt pass about twice as fast (the soonest first
    audio), close to fp32; int4 reads an eighth (the fastest decoding, the least memory) and trades a
    little more closeness for it (docs/performance.md has the figures).
    fp16 / bf16: torch weights in that type, for GPUs and CPUs with native support. On a GPU every
    decode step is a CUDA graph replay (`t2s_cuda_graph`).
    """
    from tts.models.t2s_onnx import WEIGHT_FORMATS, OnnxStack
    from tts.weights.gpt import load_gpt

    if precision not in T2S_PRECISIONS:
        raise KoeError(f"unknown T2S precision {precision!r}; expected one of {', '.join(T2S_PRECISIONS)}")
    on_cpu = torch.device(device).type == "cpu"
    quantized = precision in QUANTIZED_PRECISIONS
    if quantized and not on_cpu:
        raise KoeError(f"T2S precision {precision} runs on the CPU; use fp16 on a GPU ([tts] precision)")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    model = load_gpt(path, device=device, dtype=dtype).model
    if on_cpu and precision in WEIGHT_FORMATS:
        model.onnx_stack = OnnxStack(model, precision, release_torch_weights=True)
    if torch.device(device).type == "cuda":
        from tts.models.t2s_cuda_graph import CudaGraphDecodeStep

        model.cuda_graph = CudaGraphDecodeStep(model)
    return model


def load_synthesizer(path: str | Path, device: str | torch.device, cache_dir: Path | None = None):
    """SoVITS weights for synthesis; on the CPU the text encoder and the generator run through ONNX
    Runtime (same fp32 numbers). `cache_dir` keeps the traced text-encoder graph between runs."""
    from tts.models import flow_onnx, text_encoder_onnx
    from tts.models.generator_onnx import OnnxGenerator
    from tts.weights.sovits import load_sovits

    sovits = load_sovits(path, device=device)
    if sovits.config.version in ("v3", "v4"):
        raise KoeError(
            f"{path}: SoVITS {sovits.config.version} synthesis is not supported yet (v1, v2, v2Pro, v2ProPlus are)"
        )
    if torch.device(device).type == "cpu":
        sovits.dec.onnx = OnnxGenerator(sovits.dec, release_torch_weights=True)
        cache = None if cache_dir is None else text_encoder_onnx.graph_cache_path(cache_dir, path)
        sovits.enc_p.onnx = text_encoder_onnx.OnnxTextEncoder(
            sovits.enc_p, release_torch_weights=True, cache=cache
        )
        cache = None if cache_dir is None else flow_onnx.graph_cache_path(cache_dir, path)
        sovits.flow.onnx = flow_onnx.OnnxFlow(sovits.flow, release_torch_weights=True, cache=cache)
    return sovits


def to_int16(audio: np.ndarray) -> np.ndarray:
    """`int16(x * 32768)` with NumPy's wrapping cast, as the official post-processing does."""
    return (audio * 32768).astype(np.int16)


def normalize_fragment(audio: np.ndarray) -> np.ndarray:
    peak = np.abs(audio).max() if audio.size else 0.0
    return audio / peak if peak > 1 else audio


def sola_join(previous: torch.Tensor, current: torch.Tensor, overlap: int, search: int = 320) -> torch.Tensor:
    """Splice `current` onto `previous` by SOLA: best cross-correlation offset, Hann crossfade (spec 6.9).

    Returns previous[:-overlap] ++ crossfaded current[k*:]. Like the official code, the crossfade is
    written into `current` itself (float32), which later overlap windows can see.
    """
    w1 = previous[-overlap:]
    w2 = current[: overlap + search]
    frames = w2.unfold(0, overlap, 1)  # [search + 1, overlap]
    numerator = frames @ w1
    energy = torch.sqrt((frames * frames).sum(-1) + 1e-8)
    k = int(torch.argmax(numerator / energy))
    window = torch.hann_window(2 * overlap, periodic=True, dtype=current.dtype, device=current.device)
    tail = current[k:]
    tail[:overlap] = window[:overlap] * tail[:overlap] + window[overlap:] * w1
    return torch.cat([previous[:-overlap], tail])


class TTSPipeline:
    """A loaded voice engine (T2S + SoVITS + HuBERT + BERT + frontend) running the official pipeline."""

    def __init__(
        self,
        t2s,
        sovits: torch.nn.Module,
        frontend,
        hubert,
        speaker_encoder: SpeakerEncoder | None = None,
        device: str | torch.device = "cpu",
        cache_dir: Path | None = None,
        gpt_path: str = "",
        sovits_path: str = "",
        sv_path: str | Path | None = None,
        precision: str = "fp32",
    ):
        self.t2s = t2s
        self.precision = precision
        self.sovits = sovits
        self.frontend = frontend
        self.hubert = hubert
        self.speaker_encoder = speaker_encoder
        self.device = torch.device(device)
        self.cache_dir = cache_dir
        self.gpt_path = gpt_path
        self.sovits_path = sovits_path
        self.sv_path = sv_path
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._reset_reference_state()

    @classmethod
    def from_paths(
        cls,
        gpt_path: str | Path,
        sovits_path: str | Path,
        bert_dir: str | Path | None,
        hubert_dir: str | Path,
        device: str | torch.device = "cpu",
        cache_dir: Path | None = None,
        sv_path: str | Path | None = None,
        speaker_encoder: SpeakerEncoder | None = None,
        use_g2pw: bool = False,
        g2pw_dir: str | Path | None = None,
        precision: str = "fp32",
    ) -> TTSPipeline:
        """Load every model from explicit paths (nothing is downloaded here).

        `precision` is the T2S precision (see `load_t2s`); in its fast CPU modes (int8, int4) the
        Chinese BERT runs with 8-bit weights too. SoVITS and HuBERT stay in fp32. fp32 is the exact
        mode the parity tests check.
        """
        from tts.hubert import HubertEncoder
        from tts.text.frontend import TextFrontend

        started = time.perf_counter()
        t2s = load_t2s(gpt_path, device, precision)
        sovits = load_synthesizer(sovits_path, device, cache_dir)
        if sovits.config.is_pro and speaker_encoder is None:
            speaker_encoder = load_speaker_encoder(sv_path, device)
        hubert = HubertEncoder(hubert_dir, device=device)
        frontend = TextFrontend(
            bert_dir=bert_dir, use_g2pw=use_g2pw, g2pw_dir=g2pw_dir, device=device,
            bert_weights="int8" if precision in QUANTIZED_PRECISIONS else "fp32",
        )  # fmt: skip
        log.info("voice loaded in %.2f s (SoVITS %s)", time.perf_counter() - started, sovits.config.version)
        return cls(
            t2s, sovits, frontend, hubert, speaker_encoder, device, cache_dir,
            gpt_path=str(gpt_path), sovits_path=str(sovits_path), sv_path=sv_path, precision=precision,
        )  # fmt: skip

    # ------------------------------------------------------------------- switching weights
    def set_gpt_weights(self, path: str | Path) -> None:
        """Load another GPT file; on failure the loaded one stays (KoeError with the reason)."""
        t2s = load_t2s(path, self.device, self.precision)
        with self.lock:
            self.t2s = t2s
            self.gpt_path = str(path)
            self._mute_similarity = None
            self._prompt_cache.clear()

    def set_sovits_weights(self, path: str | Path) -> None:
        """Load another SoVITS file (any supported version); cached reference features are dropped,
        unlike the official server, which keeps prompt tokens of the previous model."""
        sovits = load_synthesizer(path, self.device, self.cache_dir)
        speaker_encoder = self.speaker_encoder
        if sovits.config.is_pro and speaker_encoder is None:
            speaker_encoder = load_speaker_encoder(self.sv_path, self.device)
        with self.lock:
            self.sovits, self.speaker_encoder, self.sovits_path = sovits, speaker_encoder, str(path)
            self._reset_reference_state()

    def prepare_reference(self, path: str | Path) -> None:
        """Compute and cache a clip's features now (KoeError if missing, unreadable or outside 3-10 s)."""
        self.references.prepare(path)

    # ------------------------------------------------------------------------------ state
    def _reset_reference_state(self) -> None:
        self.references = ReferenceProcessor(
            self.sovits,
            self.hubert,
            self.speaker_encoder,
            model_id=self.sovits_path,
            cache_dir=self.cache_dir,
        )
        self._current_ref: str | None = None
        self._mute_similarity: torch.Tensor | None = None
        self._prompt_cache: dict[str, tuple[list[int], torch.Tensor, str]] = {}

    @property
    def version(self) -> str:
        return self.sovits.config.version

    @property
    def sample_rate(self) -> int:
        return int(self.sovits.config.sampling_rate)

    @property
    def languages(self) -> tuple[str, ...]:
        return LANGUAGES_V1 if self.version == "v1" else LANGUAGES_V2

    def stop(self) -> None:
        """Ask a running `run()` to finish after the current decoder step (cancellation)."""
        self._stop.set()

    def _check_stop(self, _record=None) -> None:
        if self._stop.is_set():
            raise SynthesisStopped

    # ----------------------------------------------------------------------------- checks
    def check(self, params: dict) -> None:
        """Everything that can be rejected before synthesis starts (KoeError with the reason)."""
        p = RunParams.from_dict(params)
        if not p.text or not p.text.strip():
            raise KoeError("text is required")
        for name in ("text_lang", "prompt_lang"):
            value = getattr(p, name)
            if not value:
                raise KoeError(f"{name} is required")
            if value not in self.languages:
                raise KoeError(f"{name}: {value} is not supported in version {self.version}")
        if p.text_split_method not in SPLIT_METHODS:
            raise KoeError(f"text_split_method:{p.text_split_method} is not supported")
        if p.top_k < 1:
            raise KoeError(f"top_k must be at least 1 (got {p.top_k})")
        if not p.ref_audio_path:
            raise KoeError("ref_audio_path is required")
        self.references.prompt_semantic(p.ref_audio_path)  # missing, unreadable or outside 3-10 s
        # Missing or unreadable clips, auxiliary ones too (run() skips a missing aux clip, as officially).
        for path in [p.ref_audio_path, *p.aux_ref_audio_paths]:
            self.references.style(path)
        if not self._split(p.text, p.text_lang, p.text_split_method, streaming=False):
            raise KoeError("the text has nothing to speak after preprocessing")

    # -------------------------------------------------------------------------------- run
    def run(self, params: dict, trace: PipelineTrace | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """The official `TTS.run`: yields (sample_rate, int16 mono) pieces; `trace` collects intermediates.

        `stop()` ends it within one decoder step, with nothing more yielded (the official code yields a
        second of silence instead).
        """
        self._stop.clear()
        try:
            yield from self._run(params, trace)
        except SynthesisStopped:
            log.info("synthesis stopped")
        finally:  # the request's activations go back to the system, not into the resident set
            trim_heap()

    def _run(self, params: dict, trace: PipelineTrace | None) -> Iterator[tuple[int, np.ndarray]]:
        p = RunParams.from_dict(params)
        started = time.perf_counter()
        set_seed(p.seed)
        streaming, return_fragment, parallel, split_bucket = (
            bool(p.streaming_mode),
            bool(p.return_fragment),
            bool(p.parallel_infer),
            bool(p.split_bucket),
        )
        if parallel and streaming:
            parallel = False
        if return_fragment and streaming:
            return_fragment = False
        if return_fragment or streaming or p.speed_factor != 1.0:
            split_bucket = False
        if p.text_lang not in self.languages or p.prompt_lang not in self.languages:
            raise KoeError(
                f"unsupported language: {p.text_lang!r} / {p.prompt_lang!r} (known: {self.languages})"
            )

        reference = self._reference(p)
        bert_calls = self.frontend.record_bert_inputs(trace.bert_input_ids if trace else None)
        with bert_calls:
            prompt = self._prompt(p) if p.prompt_text else None
            sentences = self._sentences(p, drop_empty=not (streaming or return_fragment))
        if trace is not None:
            trace.prompt_phones = list(prompt[0]) if prompt else []
            trace.prompt_semantic = reference.prompt_semantic
            for sentence in sentences:
                trace.segments[sentence.index] = {"phones": sentence.phones, "bert": sentence.bert}
        if not sentences:
            if not (streaming or return_fragment):
                yield 16000, np.zeros(16000, dtype=np.int16)
            return
        pause = np.zeros(int(self.sample_rate * p.fragment_interval), dtype=np.float32)
        if streaming:
            yield from self._run_streaming(p, sentences, prompt, reference, pause, trace)
        else:
            batches = bucket_batches(
                [len(s.norm_text) for s in sentences], p.batch_size, p.batch_threshold, split_bucket
            )
            pieces: dict[int, np.ndarray] = {}
            for batch in batches:
                if self._stop.is_set():
                    break
                audio = self._synthesize_batch(
                    [sentences[i] for i in batch], prompt, reference, p, parallel, trace
                )
                if return_fragment:
                    out = np.concatenate([np.concatenate([normalize_fragment(a), pause]) for a in audio])
                    yield self.sample_rate, to_int16(out)
                else:
                    pieces.update(zip(batch, audio, strict=True))
            if not return_fragment:
                self._check_stop()
                if not pieces:
                    yield self.sample_rate, np.zeros(self.sample_rate, dtype=np.int16)
                else:
                    out = np.concatenate(
                        [np.concatenate([normalize_fragment(pieces[i]), pause]) for i in sorted(pieces)]
                    )
                    yield self.sample_rate, to_int16(out)
        log.debug("synthesis of %d sentences took %.2f s", len(sentences), time.perf_counter() - started)

    # ---------------------------------------------------------------------- inputs of run
    def _reference(self, p: RunParams):
        if not p.ref_audio_path:
            raise KoeError("ref_audio_path is required")
        if p.ref_audio_path != self._current_ref:
            # The official HuBERT drew one layer-drop number per encoder layer here (spec 6.8).
            for _ in range(self.hubert.num_layers):
                torch.rand([])
            self._current_ref = p.ref_audio_path
        return self.references.prepare(p.ref_audio_path, p.aux_ref_audio_paths)

    def _prompt(self, p: RunParams) -> tuple[list[int], torch.Tensor, str]:
        return self.prompt_features(p.prompt_text, p.prompt_lang)

    def prompt_features(self, prompt_text: str, prompt_lang: str) -> tuple[list[int], torch.Tensor, str]:
        """Phones, BERT features and normalized text of a reference transcript, computed once."""
        text = prompt_text.strip("\n")
        if text and text[-1] not in SPLITS:
            text += "." if prompt_lang == "en" else "。"
        if text not in self._prompt_cache:
            self._prompt_cache[text] = self._phones_and_bert(text, prompt_lang)
        return self._prompt_cache[text]

    def _sentences(self, p: RunParams, drop_empty: bool) -> list[Sentence]:
        texts = self._split(p.text, p.text_lang, p.text_split_method, streaming=not drop_empty)
        sentences = []
        for text in texts:
            phones, bert, norm_text = self._phones_and_bert(text, p.text_lang)
            if drop_empty and not norm_text:
                continue
            sentences.append(Sentence(len(sentences), text, phones, bert, norm_text))
        return sentences

    # ---------------------------------------------------------------- frontend adapters
    def _split(self, text: str, lang: str, method: str, streaming: bool) -> list[str]:
        from tts.text.split import split_sentences

        return split_sentences(text, lang, method, collapse=not streaming)

    def _phones_and_bert(self, text: str, lang: str) -> tuple[list[int], torch.Tensor, str]:
        result, bert = self.frontend.phones_and_bert(text, lang, self.version)
        return result.phone_ids, bert, result.norm_text

    # ---------------------------------------------------------------------- synthesis
    def _t2s_inputs(self, sentence: Sentence, prompt) -> tuple[torch.Tensor, torch.Tensor]:
        phones, bert = sentence.phones, sentence.bert
        if prompt is not None:
            phones = prompt[0] + phones
            bert = torch.cat([prompt[1], bert], dim=1)
        dtype = self.t2s.bert_proj.weight.dtype  # fp32, or the reduced precision the T2S runs in
        return torch.tensor(phones, dtype=torch.long, device=self.device), bert.to(self.device, dtype)

    def _synthesize_batch(
        self, batch: list[Sentence], prompt, reference, p: RunParams, parallel: bool, trace
    ):
        """T2S for the batch, then SoVITS; returns one float32 waveform per sentence (batch order)."""
        inputs = [self._t2s_inputs(s, prompt) for s in batch]
        prompt_tokens = reference.prompt_semantic.to(self.device) if prompt is not None else None
        tokens = self.t2s_generate(inputs, prompt_tokens, p, parallel)  # list of [n_i] int64
        if trace is not None:
            for sentence, toks in zip(batch, tokens, strict=True):
                trace.segments[sentence.index]["semantic"] = toks.cpu()
        refs = reference.refs
        sv = self.references.speaker_embeddings(refs)
        specs = [r.spec.to(self.device) for r in refs]
        style = self.references.style_vector(refs, self.device)
        if p.speed_factor == 1.0:
            codes = torch.cat(tokens).reshape(1, 1, -1)
            text = torch.tensor([ph for s in batch for ph in s.phones], device=self.device)[None]
            audio = self.sovits.decode(codes, text, specs, speed=1.0, sv_emb=sv, style=style)
            audio = audio[0, 0].float().cpu().numpy()
            bounds = np.cumsum([0] + [TOKEN_SAMPLES * len(t) for t in tokens])
            return [audio[bounds[i] : bounds[i + 1]] for i in range(len(batch))]
        out = []
        for sentence, toks in zip(batch, tokens, strict=True):
            text = torch.tensor(sentence.phones, device=self.device)[None]
            audio = self.sovits.decode(
                toks.reshape(1, 1, -1), text, specs, speed=p.speed_factor, sv_emb=sv, style=style
            )
            out.append(audio[0, 0].float().cpu().numpy())
        return out

    def t2s_generate(self, inputs, prompt_tokens, p: RunParams, parallel: bool) -> list[torch.Tensor]:
        """Generated tokens per item (prompt and EOS excluded), in the official decoder variant."""
        params = _sampling(p)
        if parallel:
            ids, berts = zip(*inputs, strict=True)
            results = generate_batch(
                self.t2s, list(ids), list(berts), prompt_tokens, params, on_step=self._check_stop
            )
        else:
            prompt = None if prompt_tokens is None else prompt_tokens[None]
            results = [
                generate(self.t2s, ids[None], bert[None], prompt, params, on_step=self._check_stop)
                for ids, bert in inputs
            ]
        return [r.semantic_tokens for r in results]

    def t2s_stream(
        self, ids, bert, prompt_tokens, p: RunParams
    ) -> Iterator[tuple[torch.Tensor | None, bool]]:
        """Token chunks of one sentence (spec 3.10): silence-aware, or fixed-length chunks."""
        if p.fixed_length_chunk:
            similarity = None
        else:
            if self._mute_similarity is None:
                self._mute_similarity = mute_token_similarity(self.t2s)
            similarity = self._mute_similarity
        prompt = None if prompt_tokens is None else prompt_tokens[None]
        chunks = stream(
            self.t2s, ids[None], bert[None], prompt, _sampling(p), p.min_chunk_length, similarity,
            on_step=self._check_stop, first_chunk_length=p.first_chunk_length,
        )  # fmt: skip
        try:
            for chunk in chunks:
                yield chunk.tokens, chunk.is_final
        finally:
            chunks.close()

    def _run_streaming(
        self, p, sentences, prompt, reference, pause, trace
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Token-chunk streaming (spec 6.9): each T2S chunk is decoded at once and spliced by SOLA."""
        spt = TOKEN_SAMPLES / p.speed_factor  # output samples per token
        overlap_size = math.ceil(p.overlap_length * spt)
        for sentence in sentences:
            if self._stop.is_set():
                return
            ids, bert = self._t2s_inputs(sentence, prompt)
            prompt_tokens = reference.prompt_semantic.to(self.device) if prompt is not None else None
            specs = [r.spec.to(self.device) for r in reference.refs]
            sv = self.references.speaker_embeddings(reference.refs)
            style = self.references.style_vector(reference.refs, self.device)
            text = torch.tensor(sentence.phones, device=self.device)[None]
            history: list[torch.Tensor] = []
            prev_audio = prev_latent = None
            first = True
            for tokens, final in self.t2s_stream(ids, bert, prompt_tokens, p):
                if trace is not None:
                    trace.stream_tokens.append(None if tokens is None else tokens.cpu())
                if self._stop.is_set():
                    return
                if tokens is None:
                    if prev_audio is not None:
                        yield self.sample_rate, to_int16(prev_audio[-overlap_size:].cpu().numpy())
                    break
                history.append(tokens)
                n = len(tokens)
                ov = p.overlap_length + (10 - n) if (not first and n < 10) else p.overlap_length
                codes = torch.cat(history).reshape(1, 1, -1)
                audio, latent, _ = self.sovits.decode_streaming(
                    codes, text, specs, speed=p.speed_factor, sv_emb=sv, style=style,
                    result_length=None if first else n + ov,
                    overlap_frames=None if first else prev_latent[..., -2 * ov :],
                )  # fmt: skip
                audio = audio[0, 0].float()
                if ov > p.overlap_length:
                    audio = audio[-int((p.overlap_length + n) * spt) :]
                if first:
                    out = audio if final else audio[:-overlap_size]
                elif final:
                    out = audio
                else:
                    out = sola_join(prev_audio, audio, overlap_size)[
                        len(prev_audio) - overlap_size : -overlap_size
                    ]
                first, prev_latent, prev_audio = False, latent, audio
                yield self.sample_rate, to_int16(normalize_fragment(out.cpu().numpy()))
            if trace is not None:
                trace.segments[sentence.index]["semantic"] = (
                    torch.cat(history).cpu() if history else torch.zeros(0)
                )
            yield self.sample_rate, to_int16(pause)
