"""UNetConfig: the sizes of the SVD UNet (unet.py), its presets and the diffusers config round trip.

Field names follow diffusers' `UNetSpatioTemporalConditionModel` config where one exists. Two fields have
no diffusers counterpart and are never written by `to_diffusers()`: `diffusers_resnet_eps` (see unet.py's
module doc) and `dropout` (diffusers hard-codes 0 in this model; the original code takes it as an argument).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass
class UNetConfig:
    in_channels: int = 8  # noisy latent (4) + conditioning-frame latent (4)
    out_channels: int = 4  # latent channels
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # channels per resolution level
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # spatio-temporal transformers per level
    layers_per_block: int = 2  # ResBlocks per down level (up levels have one more)
    num_attention_heads: tuple[int, ...] = (5, 10, 20, 20)  # heads per level (head dim 64 in SVD)
    transformer_layers_per_block: int = 1  # depth of each transformer
    cross_attention_dim: int = 1024  # CLIP ViT-H/14 image embedding width
    addition_time_embed_dim: int = 256  # sinusoidal width of each added time id
    num_added_time_ids: int = 3  # fps_id, motion_bucket_id, cond_aug
    num_frames: int = 25  # frames the weights were trained for (14 for SVD, 25 for SVD-XT)
    diffusers_resnet_eps: bool = False  # True: diffusers' GroupNorm eps 1e-6 in 72 ResBlock norms (unet.py)
    dropout: float = 0.0  # ResBlock and transformer dropout, for training (not a diffusers config key)
    extra: dict = field(default_factory=dict, repr=False)  # config keys we carry but do not use

    # ----- size presets -------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **kw) -> UNetConfig:
        """Trains on a laptop CPU in minutes (1,308,432 parameters)."""
        return cls(
            **{
                **dict(
                    block_out_channels=(32, 64),
                    attention_levels=(True, False),
                    layers_per_block=1,
                    num_attention_heads=(2, 4),
                    cross_attention_dim=32,
                    addition_time_embed_dim=32,
                    num_frames=8,
                ),
                **kw,
            }
        )

    @classmethod
    def small(cls, **kw) -> UNetConfig:
        """Minutes per epoch on a GPU, still runs on CPU (29,403,360 parameters)."""
        return cls(
            **{
                **dict(
                    block_out_channels=(64, 128, 256),
                    attention_levels=(True, True, False),
                    num_attention_heads=(2, 4, 8),
                    cross_attention_dim=256,
                    addition_time_embed_dim=64,
                    num_frames=14,
                ),
                **kw,
            }
        )

    @classmethod
    def svd(cls, **kw) -> UNetConfig:
        """stabilityai/stable-video-diffusion-img2vid: 14 frames, 1,524,623,082 parameters."""
        return cls(**{**dict(num_frames=14), **kw})

    @classmethod
    def svd_xt(cls, **kw) -> UNetConfig:
        """stabilityai/stable-video-diffusion-img2vid-xt: 25 frames, same architecture as `svd`."""
        return cls(**{**dict(num_frames=25), **kw})

    # ----- diffusers interop ------------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: dict, **kw) -> UNetConfig:
        """Build from a diffusers `UNetSpatioTemporalConditionModel` config dict (config.json)."""
        down = list(config.get("down_block_types", cls().to_diffusers()["down_block_types"]))
        up = list(config.get("up_block_types", cls().to_diffusers()["up_block_types"]))
        levels = tuple(t.startswith("CrossAttn") for t in down)
        expected_up = [
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(levels)
        ]
        if up != expected_up:
            raise ValueError(f"up_block_types must mirror down_block_types: expected {expected_up}, got {up}")
        n = len(down)

        def per_level(v, name):
            if isinstance(v, int):
                return (v,) * n
            if len(set(v)) != 1 and name in ("layers_per_block", "transformer_layers_per_block"):
                raise ValueError(f"{name} must be the same on every level, got {v}")
            return tuple(v)

        d = cls()
        cad = config.get("cross_attention_dim", d.cross_attention_dim)
        if not isinstance(cad, int):
            if len(set(cad)) != 1:
                raise ValueError(f"cross_attention_dim must be one int, got {cad}")
            cad = cad[0]
        ated = config.get("addition_time_embed_dim", d.addition_time_embed_dim)
        pcd = config.get("projection_class_embeddings_input_dim", ated * 3)
        if pcd % ated:
            raise ValueError(f"projection_class_embeddings_input_dim {pcd} is not a multiple of {ated}")
        known = {
            "in_channels",
            "out_channels",
            "block_out_channels",
            "down_block_types",
            "up_block_types",
            "layers_per_block",
            "num_attention_heads",
            "transformer_layers_per_block",
            "cross_attention_dim",
            "addition_time_embed_dim",
            "projection_class_embeddings_input_dim",
            "num_frames",
        }
        return cls(
            **{
                **dict(
                    in_channels=config.get("in_channels", d.in_channels),
                    out_channels=config.get("out_channels", d.out_channels),
                    block_out_channels=tuple(config.get("block_out_channels", d.block_out_channels)),
                    attention_levels=levels,
                    layers_per_block=per_level(config.get("layers_per_block", 2), "layers_per_block")[0],
                    num_attention_heads=per_level(
                        config.get("num_attention_heads", d.num_attention_heads), "heads"
                    ),
                    transformer_layers_per_block=per_level(
                        config.get("transformer_layers_per_block", 1), "transformer_layers_per_block"
                    )[0],
                    cross_attention_dim=cad,
                    addition_time_embed_dim=ated,
                    num_added_time_ids=pcd // ated,
                    num_frames=config.get("num_frames", d.num_frames),
                    extra={k: v for k, v in config.items() if k not in known and not k.startswith("_")},
                ),
                **kw,
            }
        )

    def to_diffusers(self) -> dict:
        """The equivalent diffusers `UNetSpatioTemporalConditionModel` config dict."""
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            down_block_types=[
                ("CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal")
                for a in self.attention_levels
            ],
            up_block_types=[
                ("CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal")
                for a in reversed(self.attention_levels)
            ],
            block_out_channels=list(self.block_out_channels),
            addition_time_embed_dim=self.addition_time_embed_dim,
            projection_class_embeddings_input_dim=self.addition_time_embed_dim * self.num_added_time_ids,
            layers_per_block=self.layers_per_block,
            cross_attention_dim=self.cross_attention_dim,
            transformer_layers_per_block=self.transformer_layers_per_block,
            num_attention_heads=list(self.num_attention_heads),
            num_frames=self.num_frames,
        )

    def __post_init__(self):
        n = len(self.block_out_channels)
        for name in ("attention_levels", "num_attention_heads"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"UNetConfig.{name} needs one entry per level ({n}), got {getattr(self, name)}"
                )
        for c in self.block_out_channels:
            if c % 32:
                raise ValueError(f"block_out_channels must be multiples of 32 (GroupNorm groups), got {c}")
        self.block_out_channels = tuple(self.block_out_channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.num_attention_heads = tuple(self.num_attention_heads)

    def replace(self, **kw) -> UNetConfig:
        return replace(self, **kw)

    def as_dict(self) -> dict:
        return asdict(self)
