"""Training features of the models: gradient checkpointing, dropout, and inflation from an image model."""

from __future__ import annotations

import pytest
import torch
from helpers import max_abs_diff, randomize_

from minisvd.models.attention import Attention, FeedForward
from minisvd.models.inflate import inflate_from_image_weights, is_temporal_key, zero_init_temporal_
from minisvd.models.resnet import ResBlock, SpatioTemporalResBlock
from minisvd.models.unet import UNet, UNetConfig
from minisvd.models.vae import VAEConfig, VideoVAE


@pytest.fixture(autouse=True)
def grad_enabled():
    # other test modules switch autograd off at import time; these tests need it
    with torch.enable_grad():
        yield


def unet_inputs(cfg: UNetConfig, B=2, F=3, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(B, F, cfg.in_channels, H, W, generator=g)  # every frame different
    c_noise = 0.25 * torch.randn(B, generator=g)
    ehs = torch.randn(B, 1, cfg.cross_attention_dim, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * B)
    return sample, c_noise, ehs, ids


def output_and_grads(unet: UNet, inputs, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    unet.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks run to run
    out = unet(*inputs)
    (out**2).mean().backward()
    # (attn2's to_q and to_k get no gradient: with one CLIP token the attention weights are exactly 1)
    return out.detach(), {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_gives_same_outputs_and_gradients(dropout, monkeypatch):
    cfg = UNetConfig.tiny(dropout=dropout)
    unet = randomize_(UNet(cfg), seed=0, scale=0.1).train()
    inputs = unet_inputs(cfg)
    out, grads = output_and_grads(unet, inputs)

    import minisvd.models.unet as unet_module

    calls, real_checkpoint = [], unet_module.checkpoint

    def counting_checkpoint(fn, *args, **kw):
        calls.append(type(fn).__name__)
        return real_checkpoint(fn, *args, **kw)

    monkeypatch.setattr(unet_module, "checkpoint", counting_checkpoint)
    assert not unet.gradient_checkpointing
    unet.enable_gradient_checkpointing()
    assert unet.gradient_checkpointing
    out_ckpt, grads_ckpt = output_and_grads(unet, inputs)

    # every SpatioTemporalResBlock and SpatioTemporalTransformer went through checkpoint
    expected = [type(m).__name__ for m in unet.modules() if type(m).__name__.startswith("SpatioTemporal")]
    assert sorted(calls) == sorted(expected) and len(calls) == 12  # tiny: 8 ResBlocks, 4 transformers
    err_out = max_abs_diff(out, out_ckpt)
    assert grads.keys() == grads_ckpt.keys()
    err_grad = max(max_abs_diff(grads[n], grads_ckpt[n]) for n in grads)
    print(f"dropout {dropout}: checkpointing vs not, output {err_out:.3g}, gradients {err_grad:.3g}")
    assert err_out <= 1e-6 and err_grad <= 1e-6

    # not in eval mode, nor without grad; and it switches off again
    calls.clear()
    with torch.no_grad():
        unet(*inputs)
    unet.eval()(*inputs)
    assert calls == []
    unet.train().disable_gradient_checkpointing()
    unet(*inputs)
    assert calls == [] and not unet.gradient_checkpointing


# ---------------------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------------------


def test_dropout_reaches_resblocks_and_transformers():
    unet = UNet(UNetConfig.tiny(dropout=0.3))
    ps = {
        "resblock": [m.dropout.p for m in unet.modules() if isinstance(m, ResBlock)],
        "attention": [m.to_out[1].p for m in unet.modules() if isinstance(m, Attention)],
        "feed-forward": [m.net[1].p for m in unet.modules() if isinstance(m, FeedForward)],
    }
    n_blocks = sum(isinstance(m, SpatioTemporalResBlock) for m in unet.modules())
    assert len(ps["resblock"]) == 2 * n_blocks  # spatial and temporal
    for name, p in ps.items():
        assert p and set(p) == {0.3}, name
    # no new weights, and nothing for diffusers (UNetSpatioTemporalConditionModel has no dropout argument)
    assert list(unet.state_dict()) == list(UNet(UNetConfig.tiny()).state_dict())
    assert "dropout" not in unet.config.to_diffusers()
    assert UNetConfig.from_diffusers(unet.config.to_diffusers()).dropout == 0.0


def test_dropout_is_random_in_training_only():
    cfg = UNetConfig.tiny(dropout=0.2)
    unet = randomize_(UNet(cfg), seed=1, scale=0.1)
    inputs = unet_inputs(cfg)
    with torch.no_grad():
        a, b = unet.train()(*inputs), unet(*inputs)
        diff_train = max_abs_diff(a, b)
        c, d = unet.eval()(*inputs), unet(*inputs)
    print(
        f"dropout 0.2: two training forwards differ by {diff_train:.3g}; eval forwards by {max_abs_diff(c, d)}"
    )
    assert diff_train > 1e-3
    assert torch.equal(c, d)

    # the default (0) changes nothing: training mode gives the eval output
    plain = UNet(UNetConfig.tiny())
    plain.load_state_dict(unet.state_dict())
    with torch.no_grad():
        assert torch.equal(plain.train()(*inputs), plain.eval()(*inputs))
        assert torch.equal(plain(*inputs), c)


# ---------------------------------------------------------------------------------------------------------
# Inflation: a zero-initialised video UNet equals the image UNet it was inflated from
# ---------------------------------------------------------------------------------------------------------


def inflated_pair(zero_init=zero_init_temporal_) -> tuple[UNet, UNet]:
    cfg = UNetConfig.tiny()
    image_model = randomize_(UNet(cfg), seed=0, scale=0.1).eval()
    video_model = randomize_(UNet(cfg), seed=1, scale=0.1)  # random temporal layers (and mix factors)
    new = inflate_from_image_weights(video_model, image_model.state_dict())
    assert new and all(is_temporal_key(k) for k in new)
    return image_model, zero_init(video_model).eval()


def test_inflated_unet_equals_image_model_per_frame():
    image_model, video_model = inflated_pair()
    sample, c_noise, ehs, ids = unet_inputs(image_model.config, B=2, F=8)
    with torch.no_grad():
        # image model: image_only_indicator = 1 bypasses every temporal layer, frames are independent
        per_frame = image_model(sample, c_noise, ehs, ids, image_only_indicator=torch.ones(2, 8))
        as_video = video_model(sample, c_noise, ehs, ids, image_only_indicator=torch.zeros(2, 8))
    err = max_abs_diff(as_video, per_frame)
    print(
        f"inflated video UNet vs image UNet per frame: max abs diff {err:.3g} (scale {per_frame.abs().max():.3g})"
    )
    assert err <= 1e-5

    # zeroing only the temporal ResBlocks' conv2 (the rule before) leaves the temporal transformers active
    def resblocks_only(model):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "temporal_res_block.conv2" in n:
                    p.zero_()
        return model

    _, partial = inflated_pair(resblocks_only)
    with torch.no_grad():
        err_partial = max_abs_diff(partial(sample, c_noise, ehs, ids), per_frame)
    print(f"with only the temporal ResBlocks zeroed: max abs diff {err_partial:.3g}")
    assert err_partial > 1e-3


def test_zeroed_temporal_layers_still_train():
    image_model, video_model = inflated_pair()
    sample, c_noise, ehs, ids = unet_inputs(image_model.config, B=1, F=4)
    video_model.train()
    video_model(sample, c_noise, ehs, ids).square().mean().backward()
    params = dict(video_model.named_parameters())
    last = ("temporal_res_block.conv2", "ff_in.net.2", "attn1.to_out.0", "attn2.to_out.0", "ff.net.2")
    expected = {
        n
        for n in params
        if is_temporal_key(n) and n.rsplit(".", 1)[0].endswith((*last, "time_pos_embed.linear_2"))
    }
    zeroed = {n for n, p in params.items() if not p.any()}
    assert zeroed == expected and len(expected) == 2 * (8 + 4 * 4 + 4)  # tiny: 8 ResBlocks, 4 transformers
    assert all(params[n].grad is not None and params[n].grad.abs().max() > 0 for n in zeroed)


def test_vae_zero_init_touches_only_temporal_resblock_convs():
    """The VAE decoder has no temporal transformers: zero_init_temporal_ zeroes exactly conv2 there."""
    vae = randomize_(VideoVAE(VAEConfig.tiny()), seed=0)
    before = {n: p.clone() for n, p in vae.named_parameters()}
    zero_init_temporal_(vae)
    changed = {n for n, p in vae.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("temporal_res_block.conv2." in n for n in changed)
    assert all(not p.any() for n, p in vae.named_parameters() if n in changed)
    assert len(changed) == 2 * sum(
        isinstance(m, SpatioTemporalResBlock) for m in vae.modules()
    )  # weight and bias
