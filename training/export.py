"""Export the small inference weights from full training checkpoints, in the official formats.

GPT: `GPT_weights_<ver>/<exp>-e<E>.ckpt` = {"weight": fp16 `model.*` state dict (295 entries at full
size), "config": the run config as a plain dict, "info": "GPT-e<E>"} (spec section 8.2), loadable
by the official WebUI and by `tts.weights.gpt.load_gpt`. One function per stage.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import KoeError
from training.checkpoints import load_checkpoint
from tts.models.t2s import T2SConfig, T2SModel

GPT_PREFIX = "model."


def gpt_weights_name(exp_name: str, epoch: int) -> str:
    """The official file-name pattern (1-based epoch)."""
    return f"{exp_name}-e{epoch}.ckpt"


def write_gpt_weights(model: T2SModel, config: dict, epoch: int, weights_dir: Path, exp_name: str) -> Path:
    """Write `model` as `<weights_dir>/<exp>-e<epoch>.ckpt` (fp16, official layout, atomic)."""
    from tts.weights.gpt import save_gpt

    path = Path(weights_dir) / gpt_weights_name(exp_name, epoch)
    save_gpt(path, model, config, info=f"GPT-e{epoch}")
    return path


def export_gpt(checkpoint: Path, weights_dir: Path, exp_name: str) -> Path:
    """Small GPT weights from a full `epoch=E-step=S.ckpt` training checkpoint of `koe voice train-gpt`."""
    state = load_checkpoint(checkpoint)
    if "state_dict" not in state or "config" not in state or "epoch" not in state:
        raise KoeError(
            f"{checkpoint} is not a koe GPT training checkpoint (expected keys state_dict, config, epoch; "
            f"found {sorted(state)[:8]})"
        )
    config = state["config"]
    model = T2SModel(T2SConfig.from_checkpoint_config(config))
    weights = {k.removeprefix(GPT_PREFIX): v for k, v in state["state_dict"].items()}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise KoeError(f"{checkpoint}: the weights do not match the model in its config: {exc}") from None
    return write_gpt_weights(model, config, int(state["epoch"]), weights_dir, exp_name)


# --- SoVITS ------------------------------------------------------------------------------------------
# `SoVITS_weights_<ver>/<exp>_e<E>_s<S>.pth` = {"weight": fp16 generator state dict without `enc_q.*`
# (weight-norm pairs kept: 673 entries for v2, 678 for v2Pro/Plus at full size), "config": the run
# config as a plain dict, "info": "<E>epoch_<S>iteration"}; v2Pro / v2ProPlus files start with the
# bytes "05" / "06" instead of "PK" (spec section 8.1). Written by `tts.weights.sovits.save_sovits`.


def sovits_weights_name(exp_name: str, epoch: int, step: int) -> str:
    """The official file-name pattern (1-based epoch, optimiser steps done)."""
    return f"{exp_name}_e{epoch}_s{step}.pth"


def export_sovits(
    generator_state: dict, config: dict, epoch: int, step: int, weights_dir: Path, exp_name: str
) -> Path:
    """Write a training generator state dict as `<weights_dir>/<exp>_e<epoch>_s<step>.pth` (official layout)."""
    from tts.weights.sovits import save_sovits

    version = (config.get("model") or {}).get("version") or config.get("version")
    path = Path(weights_dir) / sovits_weights_name(exp_name, epoch, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_sovits(path, generator_state, config, info=f"{epoch}epoch_{step}iteration", version=version)
    return path


def export_sovits_checkpoint(checkpoint: Path, weights_dir: Path, exp_name: str) -> Path:
    """Small SoVITS weights from a full `G_<step>.pth` training checkpoint of `koe voice train-sovits`."""
    state = load_checkpoint(checkpoint)
    missing = [k for k in ("model", "config", "iteration", "global_step") if k not in state]
    if missing:
        raise KoeError(
            f"{checkpoint} is not a koe SoVITS training checkpoint (missing {', '.join(missing)}; expected a "
            "G_<step>.pth written by `koe voice train-sovits`)"
        )
    return export_sovits(
        state["model"],
        state["config"],
        int(state["iteration"]),
        int(state["global_step"]),
        weights_dir,
        exp_name,
    )
