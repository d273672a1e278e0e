"""GPT (stage 1, text -> semantic tokens) fine-tuning, as the official `s1_train.py` does it by default.

What is kept from the official trainer (shared/spec/gpt-sovits-training.md section 7):
  * data: `6-name2semantic.tsv` + `2-name2text.txt` + `3-bert/`; items over 54 s (1350 tokens) or
    540 phones, or outside 3..25 phones per second, are dropped; lists under 100 items are repeated;
    batches of similar duration (2 s buckets, shuffled with seed = epoch); batch size capped at 1/4
    of the list;
  * loss: summed cross entropy over every position of `codes ++ EOS` (padding predicts EOS);
  * ScaledAdam (lr 0.01, betas 0.9/0.95), gradients summed over batches and applied only on batch
    indices 4, 8, 12, ... of each epoch (leftovers carry into the next epoch); learning rate 0.01 for
    the first optimiser step and 0.002 for every later one (the official scheduler's hard-coded value);
  * fp16 mixed precision on CUDA, seed 1234, full checkpoints `logs_s1_<ver>/ckpt/epoch=E-step=S.ckpt`
    and small weights `GPT_weights_<ver>/<exp>-e<E>.ckpt` every `save_every` epochs.
Deviations (documented fixes): the padding mask is the intent-consistent one (phones right-padded, the
padded tail masked, the first code predicted from each item's own last phone; the official snapshot
masks as if left-padded); the last epoch is always saved; checkpoints are written atomically, carry the
gradients accumulated since the last step and the RNG state, and a restarted run resumes from the
newest one; TensorBoard scalars; a CUDA out-of-memory error names a batch size that fits.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from agent.errors import KoeError
from training.checkpoints import latest_checkpoint, load_checkpoint, prune
from training.prepare import BERT_DIR, NAME2SEMANTIC, NAME2TEXT, read_name2semantic, read_name2text
from tts.models.t2s import BERT_DIM, T2SModel, prefill_mask, top_k_accuracy
from tts.weights import save_atomic

log = logging.getLogger("koe.voice.gpt")

TOKEN_RATE = 25  # semantic tokens per second
MAX_SEC = 54
MAX_TOKENS = MAX_SEC * TOKEN_RATE
MAX_PHONES = int(MAX_SEC * TOKEN_RATE / 2.5)
MIN_PHONE_RATE, MAX_PHONE_RATE = 3.0, 25.0
SMALL_DATASET = 100
BUCKET_SECONDS = 2.0
ACCUMULATE = 4  # the optimiser steps on batch indices 4, 8, 12, ... of an epoch
FIRST_LR, LATER_LR = 0.01, 0.002
SEED = 1234
CHECKPOINT_PATTERN = r"epoch=(\d+)-step=(\d+)\.ckpt"


# --- data -------------------------------------------------------------------------------------------


@dataclass
class GPTItem:
    name: str
    phoneme_ids: torch.Tensor  # [Nx] long
    semantic_ids: torch.Tensor  # [Ny] long
    bert: torch.Tensor | None  # [1024, Nx] or None (non-Chinese clips: zeros in the batch)

    @property
    def seconds(self) -> float:
        return len(self.semantic_ids) / TOKEN_RATE


@dataclass
class DatasetReport:
    kept: int
    dropped: list[tuple[str, str]] = field(default_factory=list)
    repeats: int = 1


def load_gpt_items(exp_dir: Path, version: str) -> tuple[list[GPTItem], DatasetReport]:
    """The official dataset: semantic rows in file order, filtered, small lists repeated."""
    from tts.text.symbols import symbol_ids

    semantic_path, text_path = exp_dir / NAME2SEMANTIC, exp_dir / NAME2TEXT
    for path in (semantic_path, text_path):
        if not path.is_file():
            raise KoeError(f"{path} not found: run `koe voice prepare` for this experiment first")
    texts = read_name2text(text_path)
    ids = symbol_ids(version)
    items, report = [], DatasetReport(0)
    for name, codes in read_name2semantic(semantic_path).items():
        if name not in texts:
            report.dropped.append((name, f"not in {NAME2TEXT}"))
            continue
        semantic = [int(c) for c in codes.split()]
        phones = texts[name][0].split(" ")
        if len(semantic) > MAX_TOKENS:
            report.dropped.append((name, f"{len(semantic)} tokens > {MAX_TOKENS} ({MAX_SEC} s)"))
            continue
        unknown = [p for p in phones if p not in ids]
        if unknown:
            report.dropped.append((name, f"phones not in the {version} table: {unknown[:5]}"))
            continue
        if len(phones) > MAX_PHONES:
            report.dropped.append((name, f"{len(phones)} phones > {MAX_PHONES}"))
            continue
        rate = len(phones) / (len(semantic) / TOKEN_RATE) if semantic else math.inf
        if not MIN_PHONE_RATE <= rate <= MAX_PHONE_RATE:
            report.dropped.append((name, f"{rate:.1f} phones per second (kept: 3..25)"))
            continue
        bert = None
        bert_path = exp_dir / BERT_DIR / f"{name}.pt"
        if bert_path.is_file():
            bert = torch.load(bert_path, map_location="cpu", weights_only=True).float()
            if tuple(bert.shape) != (BERT_DIM, len(phones)):
                raise KoeError(
                    f"{bert_path}: shape {tuple(bert.shape)}, expected ({BERT_DIM}, {len(phones)})"
                )
        items.append(
            GPTItem(
                name,
                torch.tensor([ids[p] for p in phones], dtype=torch.long),
                torch.tensor(semantic, dtype=torch.long),
                bert,
            )
        )
    report.kept = len(items)
    if not items:
        reasons = "; ".join(f"{n}: {why}" for n, why in report.dropped[:5]) or "the files are empty"
        raise KoeError(f"no clip of {exp_dir} can train the GPT ({reasons})")
    if len(items) < SMALL_DATASET:
        report.repeats = max(2, SMALL_DATASET // len(items))
        items = items * report.repeats
    return items, report


def collate(items: list[GPTItem], eos: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: phones with 0, codes with EOS, BERT into zeros [B, 1024, max phones]."""
    phoneme_lens = torch.tensor([len(it.phoneme_ids) for it in items])
    semantic_lens = torch.tensor([len(it.semantic_ids) for it in items])
    phonemes = torch.zeros(len(items), int(phoneme_lens.max()), dtype=torch.long)
    semantic = torch.full((len(items), int(semantic_lens.max())), eos, dtype=torch.long)
    bert = torch.zeros(len(items), BERT_DIM, int(phoneme_lens.max()))
    for i, it in enumerate(items):
        phonemes[i, : len(it.phoneme_ids)] = it.phoneme_ids
        semantic[i, : len(it.semantic_ids)] = it.semantic_ids
        if it.bert is not None:
            bert[i, :, : it.bert.shape[1]] = it.bert
    return {
        "phoneme_ids": phonemes,
        "phoneme_lens": phoneme_lens,
        "semantic_ids": semantic,
        "semantic_lens": semantic_lens,
        "bert_feature": bert,
    }


def loader_batch_size(requested: int, n_items: int) -> int:
    """The official cap: at most a quarter of the list, at least 1."""
    return max(min(requested, n_items // 4), 1)


def epoch_order(
    seconds: list[float], batch_size: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[int]:
    """Item indices for one rank and epoch: duration-sorted 2 s buckets, each shuffled, cut into groups
    of batch_size x world_size, groups shuffled, wrapped to a multiple of world_size, rank-strided."""
    rng = random.Random(epoch)
    order = sorted(range(len(seconds)), key=lambda i: seconds[i])
    buckets: dict[int, list[int]] = {}
    for i in order:
        buckets.setdefault(int(seconds[i] // BUCKET_SECONDS), []).append(i)
    flat = []
    for key in sorted(buckets):
        bucket = buckets[key]
        rng.shuffle(bucket)
        flat += bucket
    group = batch_size * world_size
    groups = [flat[i : i + group] for i in range(0, len(flat), group)]
    rng.shuffle(groups)
    flat = [i for g in groups for i in g]
    flat += flat[: (-len(flat)) % world_size]
    return flat[rank::world_size]


def epoch_batches(items: list[GPTItem], batch_size: int, epoch: int, rank: int = 0, world_size: int = 1):
    """Consecutive slices of `epoch_order`, as the DataLoader makes them (last batch may be short)."""
    order = epoch_order([it.seconds for it in items], batch_size, epoch, rank, world_size)
    return [[items[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def steps_in_epoch(n_batches: int) -> int:
    return len([i for i in range(n_batches) if is_step_batch(i)])


def is_step_batch(batch_index: int) -> bool:
    """The official rule: step after batch 4, 8, 12, ... (batches 0..4 make the first step)."""
    return batch_index > 0 and batch_index % ACCUMULATE == 0


def official_lr(optimizer_steps_done: int) -> float:
    """0.01 for the first step (the optimiser's own lr), then the scheduler's hard-coded 0.002."""
    return FIRST_LR if optimizer_steps_done == 0 else LATER_LR


# --- loss -------------------------------------------------------------------------------------------


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # [] summed cross entropy
    top3_acc: torch.Tensor  # []


class GPTTrainingModule(nn.Module):
    """The T2S model under the name `model` (so its state dict has the official `model.` keys) with
    the training loss as `forward`, which DistributedDataParallel needs."""

    def __init__(self, model: T2SModel):
        super().__init__()
        self.model = model

    def forward(self, phoneme_ids, phoneme_lens, semantic_ids, semantic_lens, bert_feature) -> LossOutput:
        """Teacher-forced loss with the intent-consistent padding (spec 7.3 recommendation).

        phoneme_ids [B, Nx] right-padded, semantic_ids [B, Ny] right-padded, bert_feature [B, 1024, Nx].
        Identical to the official `forward_train` when no item is padded (e.g. batch size 1).
        """
        m = self.model
        eos = m.config.eos
        batch, text_len = phoneme_ids.shape
        audio_len = semantic_ids.shape[1]
        device = phoneme_ids.device
        audio_pad = torch.arange(audio_len + 1, device=device)[None] >= semantic_lens[:, None]  # [B, Ny+1]
        targets = F.pad(semantic_ids, (0, 1), value=0).masked_fill(audio_pad, eos)  # [B, Ny+1]
        decoder_input = targets[:, :audio_len]  # [B, Ny]
        xy = torch.cat([m.embed_text(phoneme_ids, bert_feature), m.embed_audio(decoder_input)], dim=1)
        text_pad = torch.arange(text_len, device=device)[None] >= phoneme_lens[:, None]  # [B, Nx]
        key_pad = torch.cat([text_pad, audio_pad[:, :audio_len]], dim=1)  # [B, Nx+Ny]
        allowed = prefill_mask(text_len, audio_len, device) & ~key_pad[:, None, None, :]  # [B, 1, T, T]
        hidden = m.h(xy, allowed)  # [B, Nx+Ny, dim]
        last_phone = hidden[torch.arange(batch, device=device), phoneme_lens - 1]  # [B, dim]
        predicting = torch.cat([last_phone[:, None], hidden[:, text_len:]], dim=1)  # [B, Ny+1, dim]
        logits = m.ar_predict_layer(predicting).float()  # [B, Ny+1, vocab]
        loss_sum = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
        return LossOutput(loss_sum, top_k_accuracy(logits.detach(), targets, 3, eos))


# --- configuration ----------------------------------------------------------------------------------


@dataclass
class GPTTrainOptions:
    exp_dir: Path  # logs/<exp> equivalent: holds the prepared dataset
    exp_name: str
    version: str
    pretrained: Path  # the pretrained GPT .ckpt of the version
    batch_size: int = 8
    epochs: int = 15
    save_every: int = 5
    keep_latest: int = 1  # full checkpoints kept (the official "save latest only" = 1)
    save_weights: bool = True  # small GPT_weights_<ver>/<exp>-e<E>.ckpt files at each save
    weights_dir: Path | None = None  # default: <exp_dir>/../GPT_weights_<ver>
    device: str = "auto"
    fp16: bool = True  # mixed precision on CUDA (ignored on CPU)
    max_steps: int | None = None  # stop after this many optimiser steps (tests, benchmarks)

    @property
    def run_dir(self) -> Path:
        return self.exp_dir / f"logs_s1_{self.version}"

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "ckpt"

    def resolved_weights_dir(self) -> Path:
        suffix = "" if self.version == "v1" else f"_{self.version}"
        return self.weights_dir or self.exp_dir.parent / f"GPT_weights{suffix}"


def training_config(options: GPTTrainOptions, model: T2SModel, precision: str) -> dict:
    """The run config stored in every checkpoint and weight file (the official s1longer-v2 YAML with
    the WebUI's overrides and path keys; `model` describes the pretrained architecture)."""
    return {
        "train": {
            "seed": SEED,
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "save_every_n_epoch": options.save_every,
            "precision": precision,
            "gradient_clip": 1.0,
            "if_save_latest": options.keep_latest == 1,
            "if_save_every_weights": options.save_weights,
            "if_dpo": False,
            "half_weights_save_dir": str(options.resolved_weights_dir()),
            "exp_name": options.exp_name,
        },
        "optimizer": {
            "lr": FIRST_LR,
            "lr_init": 1e-5,
            "lr_end": 1e-4,
            "warmup_steps": 2000,
            "decay_steps": 40000,
        },
        "data": {
            "max_eval_sample": 8,
            "max_sec": model.config.max_sec,
            "num_workers": 4,
            "pad_val": model.config.eos,
        },
        "model": model.config.to_checkpoint_model_section(),
        "inference": {"top_k": 15},
        "pretrained_s1": str(options.pretrained),
        "train_semantic_path": str(options.exp_dir / NAME2SEMANTIC),
        "train_phoneme_path": str(options.exp_dir / NAME2TEXT),
        "output_dir": str(options.run_dir),
    }


# --- distributed ------------------------------------------------------------------------------------


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process (no torchrun) is world size 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(requested: str, dist_info: Distributed) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise KoeError("device cuda requested but CUDA is not available; use --device cpu")
        return torch.device("cuda", dist_info.local_rank)
    return torch.device(requested)


# --- out of memory ----------------------------------------------------------------------------------


def largest_fitting_batch_size(try_batch: Callable[[int], None], batch_size: int) -> int | None:
    """Halve the batch size until `try_batch(n)` (one forward + backward on the longest items) runs
    without running out of memory; None when even 1 does not fit."""
    n = batch_size // 2
    while n >= 1:
        try:
            try_batch(n)
            return n
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            n //= 2
    return None


def out_of_memory_error(fitting: int | None, batch_size: int, device: torch.device) -> KoeError:
    if fitting is None:
        return KoeError(
            f"CUDA out of memory on {device} even at batch size 1: the longest clips are too long for this "
            "GPU; re-slice with a shorter --max-clip-seconds or train on a larger GPU"
        )
    return KoeError(
        f"CUDA out of memory on {device} at batch size {batch_size}; batch size {fitting} fits: "
        f"run again with --batch-size {fitting} (or set [training] gpt_batch_size = {fitting})"
    )


# --- the loop ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    epochs_done: int
    global_step: int
    last_loss: float
    checkpoints: list[Path]
    weights: list[Path]
    resumed_from: Path | None
    seconds: float
    rank: int = 0  # this process's rank under torchrun (0 = the one that saves and reports)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_gpt(
    options: GPTTrainOptions, on_batch: Callable[[int, int, float], None] | None = None
) -> TrainResult:
    """Fine-tune the pretrained GPT on the prepared dataset; resumes from the newest checkpoint.

    `on_batch(done, total, loss)` is called after every batch of this rank (progress display).
    """
    from training.export import write_gpt_weights
    from tts.weights.gpt import load_gpt

    started = time.perf_counter()
    requested = options.device
    dist_info = setup_distributed(
        "cuda" if requested in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    )
    device = pick_device(requested, dist_info)
    use_amp = options.fp16 and device.type == "cuda"
    precision = "16-mixed" if use_amp else "32"
    torch.set_float32_matmul_precision("high")

    items, data_report = load_gpt_items(options.exp_dir, options.version)
    if dist_info.is_main:
        log.info(
            "GPT data: %d clips kept, %d dropped, repeated %dx -> %d items",
            data_report.kept,
            len(data_report.dropped),
            data_report.repeats,
            len(items),
        )
        for name, why in data_report.dropped:
            log.warning("GPT data: dropped %s: %s", name, why)
    batch_size = loader_batch_size(options.batch_size, len(items))
    if batch_size != options.batch_size and dist_info.is_main:
        log.warning("GPT batch size %d capped to %d (a quarter of the items)", options.batch_size, batch_size)

    model = load_gpt(options.pretrained).model.float()
    module = GPTTrainingModule(model).to(device).train()
    config = training_config(options, model, precision)
    optimizer = _make_optimizer(module)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    torch.manual_seed(SEED)
    start_epoch, global_step = 0, 0
    resumed_from = latest_checkpoint(options.ckpt_dir, CHECKPOINT_PATTERN)
    if resumed_from is not None:
        start_epoch, global_step = _restore(resumed_from, module, optimizer, scaler, device)
        if dist_info.is_main:
            log.info("resumed from %s (epoch %d, step %d)", resumed_from, start_epoch, global_step)
    else:
        module.zero_grad(set_to_none=True)
    if dist_info.is_main:
        log.info(
            "GPT training: %d epochs from epoch %d, batch size %d, %s, %s; first optimiser step at lr %.3g, "
            "later steps %.3g (the official schedule)",
            options.epochs,
            start_epoch + 1,
            batch_size,
            device,
            precision,
            FIRST_LR,
            LATER_LR,
        )

    trained = module
    if dist_info.world_size > 1:
        trained = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    writer = _tensorboard(options.run_dir) if dist_info.is_main else None
    batches_per_epoch = len(epoch_batches(items, batch_size, 0, dist_info.rank, dist_info.world_size))
    total = batches_per_epoch * max(options.epochs - start_epoch, 0)
    if steps_in_epoch(batches_per_epoch) == 0 and dist_info.is_main:
        log.warning(
            "only %d batches per epoch: the official rule steps the optimiser after batches 4, 8, 12, ..., so "
            "epochs make no step of their own (gradients carry over); use a smaller --batch-size",
            batches_per_epoch,
        )
    saved_checkpoints, saved_weights = [], []
    last_loss, done = float("nan"), 0
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else nullcontext
    stop = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, options.epochs):
            batches = epoch_batches(items, batch_size, epoch, dist_info.rank, dist_info.world_size)
            epoch_started = time.perf_counter()
            for index, batch_items in enumerate(batches):
                batch = _to(collate(batch_items, model.config.eos), device)
                try:
                    with autocast():
                        out = trained(**batch)
                    scaler.scale(out.loss_sum).backward()
                except torch.OutOfMemoryError:
                    optimizer.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
                    fitting = largest_fitting_batch_size(
                        _batch_trier(module, items, device, autocast), batch_size
                    )
                    raise out_of_memory_error(fitting, batch_size, device) from None
                last_loss = float(out.loss_sum.detach())
                if not math.isfinite(last_loss):
                    raise KoeError(f"GPT loss became {last_loss} at epoch {epoch + 1}, batch {index}")
                if is_step_batch(index):
                    lr = official_lr(global_step)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    global_step += 1
                if writer is not None:
                    step_x = epoch * batches_per_epoch + index
                    writer.add_scalar("total_loss", last_loss, step_x)
                    writer.add_scalar("top_3_acc", float(out.top3_acc), step_x)
                    writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step_x)
                done += 1
                if on_batch:
                    on_batch(done, total, last_loss)
                if options.max_steps is not None and global_step >= options.max_steps:
                    stop = True
                    break
            if dist_info.is_main:
                log.info(
                    "epoch %d/%d: %d batches, step %d, loss %.3f, %.1f s",
                    epoch + 1,
                    options.epochs,
                    len(batches),
                    global_step,
                    last_loss,
                    time.perf_counter() - epoch_started,
                )
            last_epoch = epoch + 1 == options.epochs or stop
            if ((epoch + 1) % options.save_every == 0 or last_epoch) and dist_info.is_main:
                path = _save_checkpoint(options, module, optimizer, scaler, config, epoch, global_step)
                saved_checkpoints.append(path)
                if options.save_weights:
                    weights = write_gpt_weights(
                        model, config, epoch + 1, options.resolved_weights_dir(), options.exp_name
                    )
                    saved_weights.append(weights)
                    log.info("saved %s", weights)
            if stop:
                break
    finally:
        if writer is not None:
            writer.close()
    if dist_info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank finished its last batch and rank 0 its last save
        dist.destroy_process_group()
    epochs_done = epoch + 1 if options.epochs > start_epoch else start_epoch
    return TrainResult(
        epochs_done, global_step, last_loss, saved_checkpoints, saved_weights, resumed_from,
        time.perf_counter() - started, dist_info.rank,
    )  # fmt: skip


def _make_optimizer(module: nn.Module):
    from training.scaled_adam import ScaledAdam

    return ScaledAdam(module.parameters(), lr=FIRST_LR, betas=(0.9, 0.95), clipping_scale=2.0)


def _batch_trier(module: GPTTrainingModule, items: list[GPTItem], device: torch.device, autocast):
    """`try_batch(n)`: forward + backward on the n longest items (what a batch size must survive)."""
    longest = sorted(items, key=lambda it: -it.seconds)

    def try_batch(n: int) -> None:
        batch = _to(collate(longest[:n], module.model.config.eos), device)
        with autocast():
            out = module(**batch)
        out.loss_sum.backward()
        module.zero_grad(set_to_none=True)

    return try_batch


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: train without scalars
        log.warning("tensorboard is not installed: no training curves are written")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _save_checkpoint(options, module, optimizer, scaler, config, epoch: int, global_step: int) -> Path:
    """Full resumable checkpoint (atomic), then prune to `keep_latest`."""
    pending = {n: p.grad.detach().cpu() for n, p in module.named_parameters() if p.grad is not None}
    state = {
        "state_dict": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "pending_grads": pending,  # summed since the last optimiser step (carried into the next epoch)
        "rng": torch.get_rng_state(),
        "epoch": epoch + 1,  # epochs completed
        "global_step": global_step,
        "config": config,
    }
    path = save_atomic(state, options.ckpt_dir / f"epoch={epoch}-step={global_step}.ckpt")
    prune(options.ckpt_dir, CHECKPOINT_PATTERN, options.keep_latest)
    return path


def _restore(path: Path, module, optimizer, scaler, device) -> tuple[int, int]:
    state = load_checkpoint(path)
    try:
        module.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise KoeError(
            f"{path} does not fit this run ({exc}); delete {path.parent} to start from the pretrained model"
        ) from None
    module.zero_grad(set_to_none=True)
    params = dict(module.named_parameters())
    for name, grad in state.get("pending_grads", {}).items():
        params[name].grad = grad.to(device)
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]), int(state["global_step"])
