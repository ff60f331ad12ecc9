"""minisvd.conditioning: every UNet input, batched, the same for sampling and training."""

from __future__ import annotations

import pytest
import torch

from minisvd import edm
from minisvd.conditioning import (
    Conditioning,
    conditioned_network,
    encode_latent,
    micro_conditioning,
    noise_augment,
)
from minisvd.models.unet import UNet, UNetConfig
from minisvd.models.vae import VAEConfig, VideoVAE
from minisvd.pipelines import tiny_random_pipeline


def make_cond(B=4, D=32, C=4, h=4, w=4, seed=0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(
        context=torch.randn(B, 1, D, generator=g),
        added_time_ids=micro_conditioning(torch.tensor([4.0, 8, 12, 8])[:B], 127, 0.02),
        cond_latent=torch.randn(B, C, h, w, generator=g),
    )


def test_micro_conditioning_ids():
    ids = micro_conditioning(7, 127, 0.02)
    assert ids.shape == (1, 3) and ids.tolist()[0] == pytest.approx([6.0, 127.0, 0.02])  # fps - 1 (SVD)
    batch = micro_conditioning(torch.tensor([4, 8, 12]), torch.tensor([10, 100, 200]), 0.1)
    assert batch[:, 0].tolist() == [3.0, 7.0, 11.0] and batch[:, 1].tolist() == [10.0, 100.0, 200.0]
    assert torch.allclose(batch[:, 2], torch.full((3,), 0.1))
    assert micro_conditioning(7, 127, 0.02, batch_size=5).shape == (5, 3)
    with pytest.raises(ValueError, match="motion_bucket_id has 2 values"):
        micro_conditioning(torch.tensor([4, 8, 12]), torch.tensor([1, 2]), 0.0)


def test_unconditional_zeroes_clip_and_latent_keeps_ids():
    c = make_cond()
    u = c.unconditional()
    assert u.context.abs().sum() == 0 and u.cond_latent.abs().sum() == 0
    assert torch.equal(u.added_time_ids, c.added_time_ids)  # SVD keeps the micro-conditioning
    assert c.context.abs().sum() > 0  # the original is untouched


def test_dropout_rates_and_independence():
    B = 4000
    c = Conditioning(torch.ones(B, 1, 8), torch.zeros(B, 3), torch.ones(B, 4, 2, 2))
    d = c.dropout(p_context=0.1, p_latent=0.3, generator=torch.Generator().manual_seed(0))
    lost_c = d.context[:, 0, 0] == 0
    lost_l = d.cond_latent[:, 0, 0, 0] == 0
    assert lost_c.float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert lost_l.float().mean().item() == pytest.approx(0.3, abs=0.03)
    both = (lost_c & lost_l).float().mean().item()  # independent draws: about 0.1 * 0.3
    assert both == pytest.approx(0.03, abs=0.01)
    # a dropped video loses the whole tensor, a kept one is unchanged
    assert torch.equal(d.context[~lost_c], c.context[~lost_c])
    none = c.dropout(0.0, 0.0)
    assert torch.equal(none.context, c.context) and torch.equal(none.cond_latent, c.cond_latent)


def test_batch_size_mismatch_is_named():
    with pytest.raises(ValueError, match="batch size"):
        Conditioning(torch.zeros(2, 1, 8), torch.zeros(3, 3))


def test_unet_inputs_repeat_latent_over_frames():
    c = make_cond(B=2)
    inputs = c.unet_inputs(num_frames=5)
    assert inputs["cond_latent"].shape == (2, 5, 4, 4, 4)
    assert torch.equal(inputs["cond_latent"][:, 3], c.cond_latent)
    assert Conditioning(c.context, c.added_time_ids).unet_inputs(5)["cond_latent"] is None


def test_conditioned_network_batched_equals_one_by_one():
    """Batched conditioning gives each video the output it gets alone (nothing leaks across the batch)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig.tiny(num_frames=3)).eval()
    c = make_cond(B=3)
    F = conditioned_network(unet)
    x = torch.randn(3, 3, 4, 4, 4)
    sigma = torch.tensor([0.5, 2.0, 10.0])
    with torch.no_grad():
        both = edm.denoise(F, x, sigma, **c.unet_inputs(3))
        for i in range(3):
            ci = Conditioning(c.context[i : i + 1], c.added_time_ids[i : i + 1], c.cond_latent[i : i + 1])
            alone = edm.denoise(F, x[i : i + 1], sigma[i : i + 1], **ci.unet_inputs(3))
            assert (both[i : i + 1] - alone).abs().max().item() < 1e-5


def test_pipeline_conditioning_is_the_batched_one():
    pipe = tiny_random_pipeline(seed=1, num_frames=3)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    cond = pipe.conditioning(image, 32, 32, fps=7, motion_bucket_id=100, noise_aug_strength=0.05,
                             generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert cond.context.shape == (1, 1, pipe.unet.config.cross_attention_dim)
    assert cond.added_time_ids.tolist()[0] == pytest.approx([6.0, 100.0, 0.05])
    # the latent is the VAE mode of the frame plus 0.05 * the generator's first noise draw
    x = image[None] * 2 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    expected = encode_latent(pipe.vae, noise_augment(x, 0.05, noise))
    assert (cond.cond_latent - expected).abs().max().item() < 1e-6


def test_noise_augment_per_video():
    x, n = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    out = noise_augment(x, torch.tensor([0.1, 0.5]), n)
    assert out[0].unique().tolist() == pytest.approx([0.1]) and out[1].unique().tolist() == pytest.approx(
        [0.5]
    )


def test_encode_latent_restores_dtype_on_failure():
    vae = VideoVAE(VAEConfig.tiny()).half()
    with pytest.raises(ValueError, match="3 channels"):
        encode_latent(vae, torch.zeros(1, 5, 16, 16))  # 5 channels: the VAE's input check raises
    assert next(vae.parameters()).dtype == torch.float16  # cast back although encoding failed
    z = encode_latent(vae, torch.zeros(1, 3, 16, 16))
    assert z.dtype == torch.float32 and next(vae.parameters()).dtype == torch.float16
