"""minisvd.models.vae against the original SVD code (fixture) and diffusers' AutoencoderKLTemporalDecoder.

Tolerances: the fixture was computed by the original code in fp32 on CPU; we require max abs diff
<= 1e-4 * max|expected| (we measure about 4e-7). Against diffusers (same fp32 weights, same ops up to
summation order) we require <= 1e-5 * max|expected|.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder
from helpers import fixture_meta, fixture_tensors, max_abs_diff, randomize_

from minisvd.models.distributions import DiagonalGaussian
from minisvd.models.vae import VAEConfig, VideoVAE
from minisvd.pretrained.original_vae import convert_vae_state_dict
from minisvd.pretrained.weights import load_state_dict_checked

# ---------------------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------------------


def test_svd_preset_parameter_count():
    with torch.device("meta"):
        vae = VideoVAE(VAEConfig.svd())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(vae) == 97_742_847  # diffusers' AutoencoderKLTemporalDecoder for SVD / SVD-XT
    assert count(vae.encoder) == 34_163_592
    assert count(vae.decoder) == 63_579_183
    temporal = sum(p.numel() for p in vae.temporal_parameters())
    assert 14.0e6 < temporal < 14.2e6  # the 14.09M that SVD adds to the image decoder
    assert VAEConfig.svd().scaling_factor == 0.18215
    assert VAEConfig.svd().downsample_factor == 8


def test_config_from_and_to_diffusers():
    meta = fixture_meta()
    cfg = VAEConfig.from_diffusers(meta["equivalent_diffusers_vae_config"])
    assert cfg.block_out_channels == (32, 64) and cfg.layers_per_block == 2 and cfg.latent_channels == 4
    assert VAEConfig.from_diffusers(VAEConfig.svd().to_diffusers()) == VAEConfig.svd()
    diffusers_svd = {  # vae/config.json of stabilityai/stable-video-diffusion-img2vid-xt
        "_class_name": "AutoencoderKLTemporalDecoder",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "out_channels": 3,
        "sample_size": 768,
        "scaling_factor": 0.18215,
    }
    assert VAEConfig.from_diffusers(diffusers_svd) == VAEConfig.svd()
    with pytest.raises(ValueError, match="DownEncoderBlock2D"):
        VAEConfig.from_diffusers({**diffusers_svd, "down_block_types": ["AttnDownEncoderBlock2D"] * 4})


def test_presets_accept_overrides():
    tiny = VAEConfig.tiny(latent_channels=8, sample_size=64)
    assert tiny == VAEConfig(
        block_out_channels=(32, 64), layers_per_block=2, latent_channels=8, sample_size=64
    )
    assert VAEConfig.tiny(block_out_channels=(32,)).block_out_channels == (32,)
    assert VAEConfig.tiny() == VAEConfig(block_out_channels=(32, 64), layers_per_block=2, sample_size=32)
    assert VAEConfig.svd(scaling_factor=0.2) == VAEConfig(scaling_factor=0.2)
    assert VAEConfig.svd() == VAEConfig()
    with pytest.raises(ValueError, match="multiples of 32"):
        VAEConfig.tiny(block_out_channels=(32, 48))


# ---------------------------------------------------------------------------------------------------------
# (a) Parity with the original SVD code (fixture computed by Stability-AI/generative-models)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_vae():
    meta = fixture_meta()
    vae = VideoVAE(VAEConfig.from_diffusers(meta["equivalent_diffusers_vae_config"])).eval()
    original = fixture_tensors("svd_tiny_original.safetensors")
    load_state_dict_checked(vae, convert_vae_state_dict(original), "VideoVAE")
    return vae, fixture_tensors("reference.safetensors"), meta


def test_fixture_encoder_moments(fixture_vae):
    vae, ref, _ = fixture_vae
    expected = ref["vae.expected_encoder_moments"]  # (N, 2*C_z, h, w): mean | logvar, before quant_conv
    with torch.no_grad():
        q = vae.encode(ref["vae.images"])
    got = torch.cat([q.mean, q.logvar], dim=1)  # the file has no quant_conv: ours is the identity
    assert max_abs_diff(got, expected) <= 1e-4 * expected.abs().max().item()


def test_fixture_temporal_decoder(fixture_vae):
    vae, ref, meta = fixture_vae
    expected = ref["vae.expected_decoded"]  # (F, 3, H, W), one video of F frames
    with torch.no_grad():
        got = vae.decode(ref["vae.latents"], num_frames=meta["vae_decode_num_frames"])
    assert max_abs_diff(got, expected) <= 1e-4 * expected.abs().max().item()


# ---------------------------------------------------------------------------------------------------------
# Original-checkpoint conversion
# ---------------------------------------------------------------------------------------------------------


def test_convert_covers_every_key_and_does_not_mutate():
    original = fixture_tensors("svd_tiny_original.safetensors")
    before = {k: v.clone() for k, v in original.items()}
    converted = convert_vae_state_dict(original)
    assert original.keys() == before.keys() and all(torch.equal(original[k], before[k]) for k in before)

    n_vae = sum(k.startswith("first_stage_model.") for k in original)
    assert len(converted) == n_vae + 2  # + the identity quant_conv (weight, bias)
    assert torch.equal(
        converted["decoder.time_conv_out.weight"],
        original["first_stage_model.decoder.conv_out.time_mix_conv.weight"],
    )
    assert torch.equal(converted["quant_conv.weight"][:, :, 0, 0], torch.eye(8))
    # decoder levels are reversed: original up.1 (low resolution) is our up_blocks.0
    assert torch.equal(
        converted["decoder.up_blocks.0.upsamplers.0.conv.weight"],
        original["first_stage_model.decoder.up.1.upsample.conv.weight"],
    )


def test_convert_keeps_a_quant_conv_when_present_and_accepts_no_prefix():
    original = fixture_tensors("svd_tiny_original.safetensors")
    vae_only = {
        k.removeprefix("first_stage_model."): v
        for k, v in original.items()
        if k.startswith("first_stage_model.")
    }
    vae_only["quant_conv.weight"] = torch.randn(8, 8, 1, 1)
    vae_only["quant_conv.bias"] = torch.randn(8)
    converted = convert_vae_state_dict(vae_only, prefix="")
    assert torch.equal(converted["quant_conv.weight"], vae_only["quant_conv.weight"])


def test_convert_names_keys_it_cannot_place():
    original = fixture_tensors("svd_tiny_original.safetensors")
    bad = dict(original)
    bad["first_stage_model.decoder.mid.block_1.time_stack.emb_layers.1.weight"] = torch.zeros(1)
    bad["first_stage_model.post_quant_conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"2 VAE key\(s\)[\s\S]*emb_layers[\s\S]*post_quant_conv"):
        convert_vae_state_dict(bad)
    with pytest.raises(ValueError, match="no VAE keys"):
        convert_vae_state_dict({"model.diffusion_model.out.2.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------------------
# (b) Parity with diffusers' AutoencoderKLTemporalDecoder on tiny random configs
# ---------------------------------------------------------------------------------------------------------

TINY_CONFIGS = [
    VAEConfig.tiny(),  # (32, 64), 2 layers: the size of the original-code fixture
    VAEConfig(block_out_channels=(32, 64, 64), layers_per_block=2),
    VAEConfig(block_out_channels=(32, 32, 64), layers_per_block=1, latent_channels=8, out_channels=4),
    VAEConfig(block_out_channels=(32,), layers_per_block=3),
]


def _pair(cfg: VAEConfig, seed: int = 0) -> tuple[VideoVAE, AutoencoderKLTemporalDecoder]:
    ours = randomize_(VideoVAE(cfg), seed=seed, scale=0.15).eval()
    theirs = AutoencoderKLTemporalDecoder(**cfg.to_diffusers()).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # ours -> theirs
    fresh = VideoVAE(cfg)
    fresh.load_state_dict(theirs.state_dict(), strict=True)  # theirs -> ours
    return fresh.eval(), theirs


def _close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> float:
    diff = max_abs_diff(got, expected)
    assert diff <= rel * expected.abs().max().item(), (
        f"max abs diff {diff:.3g} vs scale {expected.abs().max():.3g}"
    )
    return diff


@pytest.mark.parametrize("cfg", TINY_CONFIGS, ids=lambda c: f"{c.block_out_channels}-l{c.layers_per_block}")
def test_same_keys_and_shapes_as_diffusers(cfg):
    ours, theirs = VideoVAE(cfg).state_dict(), AutoencoderKLTemporalDecoder(**cfg.to_diffusers()).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("cfg", TINY_CONFIGS, ids=lambda c: f"{c.block_out_channels}-l{c.layers_per_block}")
def test_encode_matches_diffusers(cfg):
    ours, theirs = _pair(cfg)
    images = torch.rand(3, cfg.in_channels, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        q, q_ref = ours.encode(images), theirs.encode(images).latent_dist
        _close(q.mean, q_ref.mean)
        _close(q.logvar, q_ref.logvar)
        _close(q.std, q_ref.std)
        _close(q.kl(), q_ref.kl())
        sample = q.sample(torch.Generator().manual_seed(7))
        _close(sample, q_ref.sample(torch.Generator().manual_seed(7)))
    assert torch.equal(q.mode(), q.mean)


@pytest.mark.parametrize("cfg", TINY_CONFIGS, ids=lambda c: f"{c.block_out_channels}-l{c.layers_per_block}")
def test_decode_matches_diffusers(cfg):
    ours, theirs = _pair(cfg)
    num_frames = 5
    z = torch.randn(2 * num_frames, cfg.latent_channels, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = theirs.decode(z, num_frames=num_frames).sample  # (B*F, 3, H, W)
        _close(ours.decode(z, num_frames), expected)
        # the (B, F, C, h, w) layout gives the same frames, returned as (B, F, 3, H, W)
        video = ours.decode(z.reshape(2, num_frames, *z.shape[1:]))
        _close(video.flatten(0, 1), expected)


def test_chunked_decode_matches_diffusers_pipeline_chunking():
    """chunk_size=k is diffusers' `decode_chunk_size` (for one video): 5 frames as chunks of 2, 2, 1."""
    ours, theirs = _pair(TINY_CONFIGS[0], seed=3)
    z = torch.randn(5, 4, 4, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # what StableVideoDiffusionPipeline.decode_latents does
        expected = torch.cat(
            [theirs.decode(z[i : i + 2], num_frames=len(z[i : i + 2])).sample for i in range(0, 5, 2)]
        )
        got = ours.decode(z, num_frames=5, chunk_size=2)
        full = ours.decode(z, num_frames=5)
        _close(got, expected)
        # chunking changes pixels (temporal layers see fewer frames); a chunk >= F changes nothing
        assert max_abs_diff(got, full) > 1e-3 * full.abs().max().item()
        assert torch.equal(ours.decode(z, num_frames=5, chunk_size=5), full)
        # for B>1 we chunk along each video's frames: same as decoding each video separately
        two = torch.cat([z, z.flip(0)])
        both = ours.decode(two, num_frames=5, chunk_size=2)
        _close(both[5:], ours.decode(z.flip(0), num_frames=5, chunk_size=2))


def test_image_only_decoding_ignores_temporal_layers():
    vae = randomize_(VideoVAE(VAEConfig.tiny()), seed=5).eval()
    z = torch.randn(4, 4, 4, 4)
    with torch.no_grad():
        before = vae.decode(z, num_frames=4, image_only=True)
        for p in vae.temporal_parameters():
            p.add_(1.0)
        after = vae.decode(z, num_frames=4, image_only=True)
        # per frame: decoding frames one by one gives the same pixels
        single = torch.cat([vae.decode(z[i : i + 1], num_frames=1, image_only=True) for i in range(4)])
    assert torch.equal(before, after)
    assert max_abs_diff(single, before) < 1e-5


def test_diagonal_gaussian_matches_formulas():
    moments = torch.randn(2, 8, 3, 3)
    moments[:, 4:] = moments[:, 4:].clamp(-3, 3)
    q = DiagonalGaussian(moments)
    torch.testing.assert_close(q.std, torch.exp(0.5 * moments[:, 4:]))
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(2, 4, 3, 3, generator=g)
    torch.testing.assert_close(q.sample(torch.Generator().manual_seed(0)), moments[:, :4] + q.std * eps)
    huge = DiagonalGaussian(torch.cat([torch.zeros(1, 4, 1, 1), torch.full((1, 4, 1, 1), 100.0)], dim=1))
    assert huge.logvar.max().item() == 20.0  # clamped
    with pytest.raises(ValueError, match="2\\*C"):
        DiagonalGaussian(torch.zeros(1, 3, 2, 2))


# ---------------------------------------------------------------------------------------------------------
# (c) Bad inputs fail with clear messages
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae():
    return VideoVAE(VAEConfig.tiny()).eval()


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 5, 3, 16, 16), r"rank 5"),
        ((3, 16, 16), r"rank 3"),
        ((2, 4, 16, 16), r"expects 3 channels, got 4"),
        ((2, 3, 17, 16), r"divisible by 2 .*17x16"),
        ((2, 3, 16, 9), r"divisible by 2 .*16x9"),
    ],
)
def test_encode_rejects_bad_images(tiny_vae, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_vae.encode(torch.zeros(shape))


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((4, 4), {"num_frames": 2}, r"rank 2"),
        ((1, 2, 2, 4, 4, 4), {}, r"rank 6"),
        ((6, 3, 4, 4), {"num_frames": 3}, r"4 latent channels, got 3"),
        ((7, 4, 4, 4), {"num_frames": 3}, r"batch of 7 .* num_frames=3"),
        ((6, 4, 4, 4), {}, r"needs num_frames"),
        ((2, 3, 4, 4, 4), {"num_frames": 5}, r"num_frames=5 but latents have F=3"),
        ((6, 4, 4, 4), {"num_frames": 3, "chunk_size": 0}, r"chunk_size"),
    ],
)
def test_decode_rejects_bad_latents(tiny_vae, shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_vae.decode(torch.zeros(shape), **kwargs)


def test_bad_state_dict_names_the_keys(tiny_vae):
    sd = dict(VideoVAE(VAEConfig.tiny()).state_dict())
    del sd["decoder.time_conv_out.weight"]
    sd["decoder.conv_out.time_mix_conv.weight"] = torch.zeros(3, 3, 3, 1, 1)
    sd["encoder.conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    with pytest.raises(ValueError) as err:
        load_state_dict_checked(VideoVAE(VAEConfig.tiny()), sd, "VideoVAE")
    msg = str(err.value)
    assert "missing" in msg and "decoder.time_conv_out.weight" in msg
    assert "unexpected" in msg and "decoder.conv_out.time_mix_conv.weight" in msg
    assert "mis-shaped" in msg and "encoder.conv_in.weight: expected (32, 3, 3, 3), got (32, 4, 3, 3)" in msg


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiples of 32"):
        VAEConfig(block_out_channels=(32, 48))
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig(norm_num_groups=16)
