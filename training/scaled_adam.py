"""ScaledAdam: the optimiser the official GPT (stage 1) trainer uses (icefall-style).

Adam whose step is scaled by each tensor's RMS, so every weight matrix changes by a similar relative
amount; the tensor's overall scale is learned separately every `size_update_period` steps; scalars
(the positional `alpha`s) get a plain Adam step at a tenth of the learning rate and are clamped.
Gradients are clipped to `clipping_scale` x the median norm of the last `clipping_update_period`
steps, which starts only after that many steps (never in a typical fine-tune).
Hyper-parameters and update rules: shared/spec/gpt-sovits-training.md section 7.4. Written per
tensor (the reference stacks tensors of equal shape for speed; the maths is the same).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class ScaledAdam(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        clipping_scale: float = 2.0,
        clipping_update_period: int = 1000,
        scalar_lr_scale: float = 0.1,
        eps: float = 1e-8,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            clipping_scale=clipping_scale,
            clipping_update_period=clipping_update_period,
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
        )
        super().__init__(params, defaults)

    # --- state --------------------------------------------------------------------------------------

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["delta"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            if p.numel() > 1:
                state["param_rms"] = p.detach().pow(2).mean().sqrt()
                state["scale_exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)
                state["scale_grads"] = torch.zeros(
                    group["size_update_period"], dtype=p.dtype, device=p.device
                )
        return state

    # --- clipping -----------------------------------------------------------------------------------

    def _clipping_factor(self, group: dict, params: list[torch.Tensor]) -> float:
        """Factor (<= 1) that scales every gradient of the group this step."""
        first = self.state[params[0]]
        step = first["step"]
        period = group["clipping_update_period"]
        squares = []
        for p in params:
            grad = p.grad.detach()
            state = self.state[p]
            squares.append((grad * state["param_rms"]).pow(2).sum() if p.numel() > 1 else grad.pow(2).sum())
        norm = torch.stack([s.float() for s in squares]).sum().sqrt()
        if "model_norms" not in first:
            first["model_norms"] = torch.zeros(period, device=norm.device)
            first["clip_threshold"] = torch.tensor(float("inf"), device=norm.device)
        first["model_norms"][step % period] = norm
        if step < period:
            return 1.0
        if step % period == 0:
            first["clip_threshold"] = group["clipping_scale"] * first["model_norms"].median()
        return min(1.0, float(first["clip_threshold"] / (norm + 1e-20)))

    # --- steps --------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                self._init_state(p, group)
            factor = self._clipping_factor(group, params) if group["clipping_scale"] != 1.0 else 1.0
            for p in params:
                grad = p.grad if factor == 1.0 else p.grad * factor
                state = self.state[p]
                state["delta"].mul_(group["betas"][0])
                if p.numel() > 1:
                    self._update_size(group, p, grad, state)
                    self._step_tensor(group, p, grad, state)
                else:
                    self._step_scalar(group, p, grad, state)
                state["step"] += 1
        return loss

    def _update_size(self, group: dict, p: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        """Record sum(p * grad); every `size_update_period` steps refresh the RMS and learn the scale."""
        period = group["size_update_period"]
        step = state["step"]
        state["scale_grads"][step % period] = (p * grad).sum()
        if step % period != period - 1:
            return
        state["param_rms"] = p.pow(2).mean().sqrt()
        if step == 0:
            return
        beta1, beta2 = group["betas"]
        size_lr = group["lr"] * group["scalar_lr_scale"]
        beta2c = beta2**period
        scale_grads = state["scale_grads"]
        state["scale_exp_avg_sq"].mul_(beta2c).add_((scale_grads**2).mean() * (1 - beta2c))
        size_updates = (step + 1) // period
        bias_correction = 1 - beta2c**size_updates
        denom = state["scale_exp_avg_sq"].sqrt() + group["eps"]
        scale_step = -size_lr * bias_correction**0.5 * scale_grads.sum() / denom
        if state["param_rms"] < group["param_min_rms"]:
            scale_step = torch.zeros_like(scale_step)
        if state["param_rms"] > group["param_max_rms"]:
            scale_step = torch.full_like(scale_step, -size_lr * period)
        state["delta"].add_(p * scale_step, alpha=1 - beta1)

    def _step_tensor(self, group: dict, p: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        beta1, beta2 = group["betas"]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction = 1 - beta2 ** (state["step"] + 1)
        if bias_correction < 0.99:
            exp_avg_sq = exp_avg_sq / bias_correction
        denom = exp_avg_sq.sqrt() + group["eps"]
        scale = -group["lr"] * (1 - beta1) * state["param_rms"].clamp(min=group["param_min_rms"])
        state["delta"].add_(grad / denom * scale)
        p.add_(state["delta"])

    def _step_scalar(self, group: dict, p: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        beta1, beta2 = group["betas"]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction = 1 - beta2 ** (state["step"] + 1)
        denom = (exp_avg_sq / bias_correction).sqrt() + group["eps"]
        state["delta"].add_(grad / denom, alpha=-group["lr"] * group["scalar_lr_scale"] * (1 - beta1))
        p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        p.add_(state["delta"])
