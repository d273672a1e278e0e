"""SoVITS (stage 2) training losses as small pure functions, computed in float32.

Definitions and weights follow shared/spec/gpt-sovits-training.md section 6.4 (VITS / HiFi-GAN):
least-squares GAN losses, feature matching (x 2), the VITS KL term normalised by the number of
frames (not frames x channels, as upstream), and the mel L1 loss that the trainer weights by c_mel.
Each score / feature list has one entry per sub-discriminator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

FEATURE_MATCHING_WEIGHT = 2.0


def discriminator_loss(
    real_scores: Sequence[torch.Tensor], fake_scores: Sequence[torch.Tensor]
) -> torch.Tensor:
    """LSGAN: sum over sub-discriminators of mean((1 - D(y))^2) + mean(D(y_hat)^2)."""
    total = 0.0
    for real, fake in zip(real_scores, fake_scores):
        total = total + torch.mean((1 - real.float()) ** 2) + torch.mean(fake.float() ** 2)
    return total


def generator_adversarial_loss(fake_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator side: sum over sub-discriminators of mean((1 - D(y_hat))^2)."""
    return sum(torch.mean((1 - fake.float()) ** 2) for fake in fake_scores)


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """2 x sum over sub-discriminators and layers of mean |f_real - f_fake| (real side detached)."""
    total = 0.0
    for real_layers, fake_layers in zip(real_features, fake_features):
        for real, fake in zip(real_layers, fake_layers):
            total = total + torch.mean(torch.abs(real.float().detach() - fake.float()))
    return total * FEATURE_MATCHING_WEIGHT


def kl_loss(
    z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """VITS KL between posterior (through the flow) and prior; all [B, C, T], mask [B, 1, T].

    sum[(logs_p - logs_q - 0.5) + 0.5 (z_p - m_p)^2 exp(-2 logs_p)] * mask / sum(mask).
    """
    z_p, logs_q, m_p, logs_p, mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * mask) / torch.sum(mask)


def mel_loss(target_mel: torch.Tensor, predicted_mel: torch.Tensor) -> torch.Tensor:
    """Unweighted L1 between log-mel spectrograms [B, n_mels, T] (the trainer multiplies by c_mel)."""
    return F.l1_loss(target_mel.float(), predicted_mel.float())
