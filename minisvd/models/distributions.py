"""The VAE's posterior q(z|x): a Gaussian with diagonal covariance (Kingma & Welling 2014).

The encoder of the LDM/SVD autoencoder (Rombach et al. 2022, Sec. 3 and App. G) predicts, per latent
pixel and channel, a mean and a log-variance. They arrive concatenated on the channel axis as the
"moments" tensor (N, 2*C, h, w); the first C channels are the mean, the last C the log-variance.
"""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))), built from the encoder's moments (N, 2*C, h, w).

    The log-variance is clamped to [-30, 20] (as the original code and diffusers do) so that exp() can
    neither underflow to a zero std nor overflow.
    """

    def __init__(self, moments: torch.Tensor):
        if moments.ndim != 4 or moments.shape[1] % 2 != 0:
            raise ValueError(
                f"moments must be (N, 2*C, h, w) with mean and logvar on channels, got {tuple(moments.shape)}"
            )
        self.moments = moments  # (N, 2C, h, w)
        self.mean, logvar = moments.chunk(2, dim=1)  # (N, C, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean (what SVD uses to encode the conditioning frame)."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample z = mean + std * eps, eps ~ N(0, I) drawn from `generator`.

        The noise is drawn on the generator's device (or the moments' device if None) in the moments'
        dtype, so a CPU generator gives the same numbers as diffusers' `latent_dist.sample(generator)`.
        """
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) summed over (C, h, w): (N,). The VAE's regulariser (LDM App. G)."""
        return 0.5 * torch.sum(self.mean**2 + self.var - 1.0 - self.logvar, dim=(1, 2, 3))

    def __repr__(self) -> str:
        return f"DiagonalGaussian(mean={tuple(self.mean.shape)}, dtype={self.mean.dtype})"
