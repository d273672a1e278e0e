"""SoVITS (stage 2) fine-tuning: `koe voice train-sovits` (shared/spec/gpt-sovits-training.md section 6).

Official behaviour kept: the s2.json / s2v2Pro(Plus).json configuration, data filtering and bucket
batching (training/sovits_data.py), the losses and their weights (training/losses.py: LSGAN,
feature matching x 2, mel L1 x 45, KL x 1), AdamW(lr 1e-4, betas (0.8, 0.99), eps 1e-9, weight decay
0.01) for generator and discriminator, the reduced learning rate (x text_low_lr_rate) for
`enc_p.text_embedding`, `enc_p.encoder_text` and `enc_p.mrte`, the per-epoch decay lr = base x
0.999875^epoch (epoch 1 already decayed once, as upstream), no gradient clipping, one shared
GradScaler with fp16 autocast on CUDA, the frozen `ssl_proj` + quantizer, initialisation from the
pretrained G and D of the chosen version, full checkpoints `logs_s2_<version>/G_<step>.pth` /
`D_<step>.pth` and small weights `<exp>_e<epoch>_s<step>.pth` every `save_every_epochs` epochs.

Deviations (all keep the files compatible): the final epoch is always saved; a crash resumes from
the newest complete G/D pair (written atomically, D first) with the step count it had, and the
learning rate continues the schedule instead of compounding the decay again (upstream's resume
quirk); a pretrained G without `enc_q` (an exported voice) is refused instead of silently training a
random posterior encoder; scalars go to TensorBoard (`logs_s2_<version>/tensorboard`); a CUDA out-of-memory
error names a batch size that should fit. Multi-GPU: start with `torchrun --nproc_per_node N`; each
rank trains `batch_size` items (DistributedDataParallel), rank 0 logs and saves.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from agent.errors import KoeError
from training import losses
from training.checkpoints import checkpoints, load_checkpoint, prune
from training.discriminator import MultiPeriodDiscriminator, discriminator_for
from training.sovits_data import BucketBatchSampler, SoVITSDataset, collate
from training.sovits_forward import GeneratorOutput, generator_forward, slice_windows
from tts.models.sovits import SynthesizerTrn
from tts.spectrogram import mel_spectrogram, spec_to_log_mel
from tts.weights import read_checkpoint, save_atomic
from tts.weights.sovits import POSTERIOR_PREFIX, config_from_file, read_sovits

log = logging.getLogger("koe.voice.sovits")

TRAINABLE_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
SEGMENT_SAMPLES = 20480  # train.segment_size: 32 frames of 640 samples decoded per item
TEXT_MODULES = ("enc_p.text_embedding", "enc_p.encoder_text", "enc_p.mrte")  # reduced learning rate
G_PATTERN, D_PATTERN = r"G_(\d+)\.pth", r"D_(\d+)\.pth"
MEMORY_HEADROOM = 0.9  # share of the GPU memory a suggested batch size may plan to use


def official_config(version: str) -> dict:
    """configs/s2.json (v1/v2) or s2v2Pro.json / s2v2ProPlus.json as the official trainer uses them."""
    pro, plus = version in ("v2Pro", "v2ProPlus"), version == "v2ProPlus"
    train = {
        "log_interval": 100, "eval_interval": 500, "seed": 1234, "epochs": 100, "learning_rate": 1e-4,
        "betas": [0.8, 0.99], "eps": 1e-9, "batch_size": 32, "fp16_run": True, "lr_decay": 0.999875,
        "segment_size": SEGMENT_SAMPLES, "init_lr_ratio": 1, "warmup_epochs": 0, "c_mel": 45, "c_kl": 1.0,
        "text_low_lr_rate": 0.4,
    }  # fmt: skip
    data = {
        "max_wav_value": 32768.0, "sampling_rate": 32000, "filter_length": 2048, "hop_length": 640,
        "win_length": 2048, "n_mel_channels": 128, "mel_fmin": 0.0, "mel_fmax": None, "add_blank": True,
        "n_speakers": 300, "cleaned_text": True,
    }  # fmt: skip
    model = {
        "inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
        "kernel_size": 3, "p_dropout": 0.0 if pro else 0.1, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_rates": [10, 8, 2, 2, 2],
        "upsample_initial_channel": 768 if plus else 512,
        "upsample_kernel_sizes": [20, 16, 8, 2, 2] if plus else [16, 16, 8, 2, 2], "n_layers_q": 3,
        "use_spectral_norm": False, "gin_channels": 1024 if pro else 512, "semantic_frame_rate": "25hz",
        "freeze_quantizer": True, "version": version,
    }  # fmt: skip
    return {"train": train, "data": data, "model": model, "s2_ckpt_dir": None, "content_module": "cnhubert"}


# Model keys whose value decides tensor shapes: taken from the pretrained file so its weights fit.
SHAPE_KEYS = (
    "inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers", "kernel_size", "resblock",
    "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates", "upsample_initial_channel",
    "upsample_kernel_sizes", "gin_channels",
)  # fmt: skip


@dataclass
class SoVITSTrainSettings:
    """What `koe voice train-sovits` asks for; defaults are the WebUI's (spec section 9)."""

    exp_dir: Path  # experiment folder written by `koe voice prepare`
    pretrained_g: Path
    pretrained_d: Path
    version: str = "v2"
    exp_name: str | None = None  # default: the experiment folder's name
    batch_size: int = 4
    epochs: int = 8
    save_every_epochs: int = 4
    keep_latest: int = 3  # full G/D checkpoint pairs kept
    fp16: bool = True  # mixed precision (CUDA only)
    text_low_lr_rate: float = 0.4
    save_weights: bool = True  # small inference weight at every save (official if_save_every_weights)
    weights_dir: Path | None = None  # default: <exp_dir>/../SoVITS_weights_<version>
    num_workers: int = 2
    duplicate_below: int = 100  # official small-dataset repetition threshold (0 = never repeat)
    log_interval: int = 100  # steps between log lines
    device: str | None = None  # default: cuda when available, else cpu
    seed: int = 1234

    def __post_init__(self):
        self.exp_dir = Path(self.exp_dir)
        self.exp_name = self.exp_name or self.exp_dir.name.rstrip()
        if self.version not in TRAINABLE_VERSIONS:
            raise KoeError(
                f"SoVITS training supports {', '.join(TRAINABLE_VERSIONS)}, not {self.version} "
                "(v3/v4 use a different, LoRA-based trainer)"
            )
        for name in ("batch_size", "epochs", "save_every_epochs", "keep_latest", "log_interval"):
            if getattr(self, name) < 1:
                raise KoeError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.weights_dir is None:  # next to the experiment folder, like upstream's repo-level folders
            suffix = "" if self.version == "v1" else f"_{self.version}"
            self.weights_dir = self.exp_dir.parent / f"SoVITS_weights{suffix}"

    @property
    def checkpoint_dir(self) -> Path:
        return self.exp_dir / f"logs_s2_{self.version}"


@dataclass
class TrainResult:
    epochs_done: int
    global_step: int
    checkpoints: list[Path] = field(default_factory=list)
    weights: list[Path] = field(default_factory=list)
    resumed_from: Path | None = None
    rank: int = 0  # this process's rank under torchrun (only rank 0 saves)


def run_config(settings: SoVITSTrainSettings, pretrained_config: dict) -> dict:
    """The official run config with the WebUI overrides; shape keys come from the pretrained file."""
    config = official_config(settings.version)
    file_model = (pretrained_config or {}).get("model") or {}
    config["model"].update({k: file_model[k] for k in SHAPE_KEYS if k in file_model})
    config["train"].update(
        epochs=settings.epochs, batch_size=settings.batch_size, fp16_run=settings.fp16,
        text_low_lr_rate=settings.text_low_lr_rate, pretrained_s2G=str(settings.pretrained_g),
        pretrained_s2D=str(settings.pretrained_d), if_save_latest=False, if_save_every_weights=settings.save_weights,
        save_every_epoch=settings.save_every_epochs, gpu_numbers="0",
    )  # fmt: skip
    config["data"]["exp_dir"] = str(settings.exp_dir)
    config.update(
        s2_ckpt_dir=str(settings.exp_dir), save_weight_dir=str(settings.weights_dir), name=settings.exp_name,
        version=settings.version, pretrain=None, resume_step=None,
    )  # fmt: skip
    return config


def epoch_learning_rate(base: float, decay: float, epoch: int) -> float:
    """Learning rate of 1-based `epoch`: base x decay^epoch (the official ExponentialLR result)."""
    return base * decay**epoch


def optimizer_groups(model: nn.Module, base_lr: float, text_low_lr_rate: float) -> list[dict]:
    """Official AdamW groups: everything else at base lr, then each text module at the reduced rate."""
    text = {name: [] for name in TEXT_MODULES}
    rest = []
    for name, param in model.named_parameters():
        owner = next((m for m in TEXT_MODULES if name.startswith(m + ".")), None)
        (text[owner] if owner else rest).append(param)
    groups = [{"params": rest, "lr": base_lr, "initial_lr": base_lr}]
    low = base_lr * text_low_lr_rate
    groups += [{"params": text[m], "lr": low, "initial_lr": low} for m in TEXT_MODULES]
    return groups


def suggest_batch_size(batch_size: int, base_bytes: int, peak_bytes: int, total_bytes: int) -> int:
    """Largest batch that should fit, assuming memory grows linearly with the batch beyond the model."""
    per_item = max(peak_bytes - base_bytes, 1) / batch_size
    fits = int((MEMORY_HEADROOM * total_bytes - base_bytes) // per_item)
    return max(1, min(batch_size - 1, fits))


def _load_matching(module: nn.Module, weights: dict, source: Path) -> list[str]:
    """Non-strict load (as upstream): keys with the model's name and shape; returns the keys left fresh."""
    own = module.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict(usable, strict=False)
    fresh = sorted(set(own) - set(usable))
    if fresh:
        log.warning("%s: %d of %d tensors not in the file, left random: %s", source, len(fresh), len(own),
                    ", ".join(fresh[:6]) + (" ..." if len(fresh) > 6 else ""))  # fmt: skip
    return fresh


def load_pretrained(
    net_g: SynthesizerTrn, net_d: nn.Module, g_weights: dict, d_weights: dict, s: SoVITSTrainSettings
):
    if not any(k.startswith(POSTERIOR_PREFIX) for k in g_weights):
        raise KoeError(
            f"{s.pretrained_g} has no posterior encoder (enc_q.*): it is an exported voice, not a pretrained "
            f"generator. Fine-tune from the official pretrained s2G file of {s.version}."
        )
    _load_matching(net_g, g_weights, s.pretrained_g)
    _load_matching(net_d, d_weights, s.pretrained_d)


def latest_pair(folder: Path) -> tuple[int, Path, Path] | None:
    """The newest step that has both G_<step>.pth and D_<step>.pth."""
    d_steps = {numbers[0]: path for numbers, path in checkpoints(folder, D_PATTERN)}
    pairs = [(n[0], path, d_steps[n[0]]) for n, path in checkpoints(folder, G_PATTERN) if n[0] in d_steps]
    return pairs[-1] if pairs else None


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> Distributed:
    """One process, or one per GPU under torchrun (WORLD_SIZE / LOCAL_RANK set)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world_size == 1:
        return Distributed(device=torch.device(device or ("cuda" if cuda else "cpu")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    target = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(target)
    return Distributed(dist.get_rank(), world_size, target)


class GeneratorForTraining(nn.Module):
    """Wraps the synthesizer so DistributedDataParallel sees the training forward."""

    def __init__(self, model: SynthesizerTrn, segment_frames: int):
        super().__init__()
        self.model = model
        self.segment_frames = segment_frames

    def forward(self, batch: dict[str, torch.Tensor]) -> GeneratorOutput:
        return generator_forward(self.model, batch, self.segment_frames)


def _grad_norm(params) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class SoVITSUpdate:
    """Generator + discriminator with their AdamW optimisers and GradScaler; `step` = one official update."""

    def __init__(self, net_g: SynthesizerTrn, net_d: MultiPeriodDiscriminator, config: dict, use_amp: bool):
        hp = config["train"]
        self.net_g, self.net_d, self.config = net_g, net_d, config
        self.segment_frames = hp["segment_size"] // config["data"]["hop_length"]
        base_lr = hp["learning_rate"]
        adam = {"betas": tuple(hp["betas"]), "eps": hp["eps"]}  # weight decay: AdamW's default 0.01
        self.optim_g = torch.optim.AdamW(
            optimizer_groups(net_g, base_lr, hp["text_low_lr_rate"]), base_lr, **adam
        )
        self.optim_d = torch.optim.AdamW(
            [{"params": list(net_d.parameters()), "initial_lr": base_lr}], base_lr, **adam
        )
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        self.device = torch.device("cpu")
        self.g_train: nn.Module = GeneratorForTraining(net_g, self.segment_frames)
        self.d_train: nn.Module = net_d

    def to(self, device: torch.device, distributed: bool = False) -> SoVITSUpdate:
        """Move models and optimiser state to `device`; wrap both models in DDP when `distributed`."""
        self.device = device
        self.net_g.to(device)
        self.net_d.to(device)
        for optim in (self.optim_g, self.optim_d):
            for state in optim.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and key != "step":
                        state[key] = value.to(device)
        if distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.g_train = DistributedDataParallel(self.g_train, device_ids=ids, find_unused_parameters=True)
            self.d_train = DistributedDataParallel(self.net_d, device_ids=ids, find_unused_parameters=True)
        return self

    def set_epoch(self, epoch: int) -> None:
        decay = self.config["train"]["lr_decay"]
        for optim in (self.optim_g, self.optim_d):
            for group in optim.param_groups:
                group["lr"] = epoch_learning_rate(group["initial_lr"], decay, epoch)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One discriminator and one generator update (official order); returns the logged scalars."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        hp, data = self.config["train"], self.config["data"]
        hop, n_fft, win = data["hop_length"], data["filter_length"], data["win_length"]
        sr, n_mels, fmin, fmax = (
            data["sampling_rate"],
            data["n_mel_channels"],
            data["mel_fmin"],
            data["mel_fmax"],
        )
        amp = torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp)
        with amp:
            out: GeneratorOutput = self.g_train(batch)
            real = slice_windows(batch["wav"], out.starts * hop, hp["segment_size"])
            scores = self.d_train(torch.cat([real, out.audio.detach()]))
        n = real.shape[0]
        loss_d = losses.discriminator_loss([s[:n] for s, _ in scores], [s[n:] for s, _ in scores])
        self.optim_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        self.scaler.unscale_(self.optim_d)
        grad_d = _grad_norm(self.net_d.parameters())
        self.scaler.step(self.optim_d)

        with amp:
            outputs = self.d_train(torch.cat([real, out.audio]))
        real_features = [[f[:n] for f in features] for _, features in outputs]
        fake_features = [[f[n:] for f in features] for _, features in outputs]
        with torch.autocast(self.device.type, enabled=False):
            full_mel = spec_to_log_mel(batch["spec"].float(), sr, n_fft, n_mels, fmin, fmax)
            target_mel = slice_windows(full_mel, out.starts, self.segment_frames)
            predicted_mel = mel_spectrogram(
                out.audio.float().squeeze(1), n_fft, n_mels, sr, hop, win, fmin, fmax
            )
            loss_mel = losses.mel_loss(target_mel, predicted_mel) * hp["c_mel"]
            loss_kl = losses.kl_loss(out.z_p, out.logs_q, out.m_p, out.logs_p, out.mask) * hp["c_kl"]
            loss_fm = losses.feature_matching_loss(real_features, fake_features)
            loss_gen = losses.generator_adversarial_loss([score[n:] for score, _ in outputs])
            loss_g = loss_gen + loss_fm + loss_mel + out.commitment + loss_kl
        self.optim_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.unscale_(self.optim_g)
        grad_g = _grad_norm(self.net_g.parameters())
        self.scaler.step(self.optim_g)
        self.scaler.update()
        return {
            "loss/d/total": loss_d.item(), "loss/g/total": loss_g.item(), "loss/g/gen": loss_gen.item(),
            "loss/g/fm": loss_fm.item(), "loss/g/mel": loss_mel.item(), "loss/g/kl": loss_kl.item(),
            "loss/g/kl_ssl": float(out.commitment), "grad_norm_d": grad_d, "grad_norm_g": grad_g,
            "learning_rate": self.optim_g.param_groups[0]["lr"],
        }  # fmt: skip


class SoVITSTrainer:
    """State of one training run: models, optimisers, data, step counters."""

    def __init__(self, settings: SoVITSTrainSettings, on_step: Callable[[int, dict], None] | None = None):
        self.s = settings
        self.on_step = on_step
        self.dist = setup_distributed(settings.device)
        self.device = self.dist.device
        torch.manual_seed(settings.seed)
        if self.device.type == "cuda":  # as upstream: TF32 matmuls and convolutions
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        pretrained = read_sovits(settings.pretrained_g)
        if pretrained.version != settings.version:
            raise KoeError(
                f"{settings.pretrained_g} is a SoVITS {pretrained.version} model, but version {settings.version} "
                "was asked for; pass the pretrained files of that version or change --version"
            )
        self.config = run_config(settings, pretrained.config)
        self.net_g = SynthesizerTrn(
            config_from_file(self.config, settings.version, source=str(settings.pretrained_g)),
            weight_norm=True,
            posterior=True,
        )
        d_payload = read_checkpoint(settings.pretrained_d).payload
        d_weights = d_payload.get("weight") if isinstance(d_payload, dict) else None
        if not isinstance(d_weights, dict):
            raise KoeError(
                f"{settings.pretrained_d} has no 'weight' state dict (expected a pretrained s2D*.pth)"
            )
        self.net_d = discriminator_for(d_weights, settings.version, str(settings.pretrained_d))

        self.dataset = SoVITSDataset(settings.exp_dir, settings.version, settings.duplicate_below)
        self.sampler = BucketBatchSampler(
            self.dataset.frames(), settings.batch_size, self.dist.world_size, self.dist.rank
        )
        workers = settings.num_workers
        self.loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=3 if workers > 0 else None,
        )  # fmt: skip

        self.update = SoVITSUpdate(
            self.net_g, self.net_d, self.config, settings.fp16 and self.device.type == "cuda"
        )
        self.epoch_start, self.global_step, self.resumed_from = 1, 0, None
        if not self._resume():
            load_pretrained(self.net_g, self.net_d, pretrained.weights, d_weights, settings)
        self.update.to(self.device, distributed=self.dist.world_size > 1)
        self.base_memory = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    # --- checkpoints -------------------------------------------------------------------------------

    def _resume(self) -> bool:
        found = latest_pair(self.s.checkpoint_dir)
        if found is None:
            return False
        step, g_path, d_path = found
        g_state, d_state = load_checkpoint(g_path), load_checkpoint(d_path)
        u = self.update
        try:
            self.net_g.load_state_dict(g_state["model"])
            self.net_d.load_state_dict(d_state["model"])
            u.optim_g.load_state_dict(g_state["optimizer"])
            u.optim_d.load_state_dict(d_state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise KoeError(
                f"cannot resume from {g_path} / {d_path}: {str(exc).splitlines()[0]}. They belong to another model "
                f"or version; move {self.s.checkpoint_dir} away to start from the pretrained models."
            ) from None
        if g_state.get("scaler"):  # empty when saved without fp16
            u.scaler.load_state_dict(g_state["scaler"])
        self.epoch_start = int(g_state["iteration"]) + 1
        self.global_step = int(g_state.get("global_step", step))
        self.resumed_from = g_path
        return True

    def save(self, epoch: int, result: TrainResult) -> None:
        """D then G (a pair is complete once G exists), the small weight, then prune old pairs."""
        folder, u = self.s.checkpoint_dir, self.update
        common = {
            "iteration": epoch,
            "learning_rate": self.config["train"]["learning_rate"],
            "global_step": self.global_step,
        }
        d_state = {"model": self.net_d.state_dict(), "optimizer": u.optim_d.state_dict(), **common}
        save_atomic(d_state, folder / f"D_{self.global_step}.pth")
        g_state = {"model": self.net_g.state_dict(), "optimizer": u.optim_g.state_dict(), **common,
                   "scaler": u.scaler.state_dict(), "config": self.config}  # fmt: skip
        result.checkpoints.append(save_atomic(g_state, folder / f"G_{self.global_step}.pth"))
        if self.s.save_weights:
            from training.export import export_sovits

            state, step = self.net_g.state_dict(), self.global_step
            path = export_sovits(state, self.config, epoch, step, self.s.weights_dir, self.s.exp_name)
            result.weights.append(path)
            log.info("saved %s", path)
        prune(folder, G_PATTERN, self.s.keep_latest)
        prune(folder, D_PATTERN, self.s.keep_latest)

    def _out_of_memory(self, exc: Exception) -> KoeError:
        b = self.s.batch_size
        if self.device.type != "cuda":
            return KoeError(f"out of memory at batch size {b}: try --batch-size {max(1, b // 2)}")
        peak = torch.cuda.max_memory_allocated(self.device)
        total = torch.cuda.get_device_properties(self.device).total_memory
        if b == 1:
            return KoeError(
                f"CUDA out of memory at batch size 1 ({peak / 2**30:.1f} of {total / 2**30:.1f} GiB): keep fp16 on, "
                "or slice the recordings into shorter clips (`koe voice slice --max-clip-seconds 10`)"
            )
        fits = suggest_batch_size(b, self.base_memory, peak, total)
        return KoeError(
            f"CUDA out of memory at batch size {b} ({peak / 2**30:.1f} of {total / 2**30:.1f} GiB in use); "
            f"--batch-size {fits} should fit"
        )

    # --- the run -----------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        s = self.s
        result = TrainResult(
            self.epoch_start - 1, self.global_step, resumed_from=self.resumed_from, rank=self.dist.rank
        )
        writer = self._writer()
        file_log = self._file_log()
        if self.dist.is_main:
            if self.resumed_from is not None:
                log.info("resuming from %s: epoch %d done, step %d", self.resumed_from, self.epoch_start - 1,
                         self.global_step)  # fmt: skip
            log.info("SoVITS %s: %d clips, %d steps per epoch, batch size %d x %d process(es), epochs %d..%d",
                     s.version, len(self.dataset), len(self.sampler), s.batch_size, self.dist.world_size,
                     self.epoch_start, s.epochs)  # fmt: skip
        try:
            for epoch in range(self.epoch_start, s.epochs + 1):
                self.update.set_epoch(epoch)
                self.sampler.set_epoch(epoch)
                started = time.perf_counter()
                for batch in self.loader:
                    try:
                        scalars = self.update.step(batch)
                    except torch.cuda.OutOfMemoryError as exc:
                        raise self._out_of_memory(exc) from None
                    self.global_step += 1
                    if not all(math.isfinite(v) for v in scalars.values()):
                        log.warning("step %d: non-finite loss %s", self.global_step, scalars)
                    if self.dist.is_main:
                        for name, value in scalars.items():
                            writer.add_scalar(name, value, self.global_step)
                        if self.global_step % s.log_interval == 0:
                            log.info("epoch %d step %d: %s", epoch, self.global_step,
                                     " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))  # fmt: skip
                        if self.on_step:
                            self.on_step(self.global_step, scalars)
                result.epochs_done, result.global_step = epoch, self.global_step
                if self.dist.is_main:
                    log.info(
                        "epoch %d done in %.1f s (step %d)",
                        epoch,
                        time.perf_counter() - started,
                        self.global_step,
                    )
                    if epoch % s.save_every_epochs == 0 or epoch == s.epochs:
                        self.save(epoch, result)
                        writer.flush()
                if self.dist.world_size > 1:
                    dist.barrier()
        finally:
            writer.close()
            if file_log is not None:
                log.removeHandler(file_log)
                file_log.close()
        return result

    def _writer(self):
        if not self.dist.is_main:
            return _NoWriter()
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.s.checkpoint_dir / "tensorboard"))

    def _file_log(self) -> logging.Handler | None:
        """Also write the run's log lines to <exp_dir>/train.log (as upstream)."""
        if not self.dist.is_main:
            return None
        self.s.exp_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.s.exp_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        return handler


class _NoWriter:
    """TensorBoard stand-in for ranks other than 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def train_sovits(
    settings: SoVITSTrainSettings, on_step: Callable[[int, dict], None] | None = None
) -> TrainResult:
    """Fine-tune SoVITS on a prepared experiment folder; resumes automatically from its checkpoints."""
    try:
        return SoVITSTrainer(settings, on_step).train()
    finally:
        if dist.is_initialized():  # started by setup_distributed under torchrun
            dist.destroy_process_group()
