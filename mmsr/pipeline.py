"""``MMSRPipeline``: multimodal diffusion super-resolution as a diffusers pipeline."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel, VQModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .autoencoder import PixelShuffleAutoencoder
from .conditioning import MODALITIES, TEXT_GROUP, ConditionEmbedding
from .connector import MMLConnector, check_temperatures
from .constants import SCALE
from .guidance import combine, negative_branch
from .spatial import code_channels, spatial_codes
from .tiling import default_overlap, resolve_tile, tiled_apply, vae_tiling
from .timing import StageTimer
from .tokenizer import ModalityTokenizer, PatchCodebook

logger = logging.getLogger(__name__)

# ``stage1`` config value -> the registered baseline that runs it (``baselines.get_baseline``).
STAGE1_MODELS = {None: None, "realesrgan-x4plus": "realesrgan"}


@dataclass
class MMSRPipelineOutput(BaseOutput):
    """``images``: ``(B, 3, 4h, 4w)`` in [0, 1]; ``timings``: seconds per stage; ``warnings``: for the user."""

    images: torch.Tensor
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


class MMSRPipeline(DiffusionPipeline):
    """Super-resolve an LR image x4 conditioned on a caption and depth/segmentation/edge maps.

    Components: ``vae`` (latents of HR and bicubic LR), ``unet`` (``in_channels = 2 * latent_channels``:
    noisy latent concatenated with the LR latent), ``scheduler`` (DDIM), ``vqmodel`` (frozen modality
    tokenizer), ``condition_embedding`` (``m_0``, type and position embeddings), ``connector`` (MMLC),
    ``text_encoder`` and ``tokenizer``.

    Configuration (stored in ``model_index.json``, so a checkpoint knows what it learned):

    * ``stage1``: ``None`` (the paper: the LR condition is the bicubic upsample) or
      ``"realesrgan-x4plus"``: a frozen restoration stage whose output replaces bicubic (DiffBIR).
    * ``residual``: the diffusion generates ``HR - condition image``, so a model that predicts zero
      returns the condition image exactly.
    * ``residual_scale``: the default share ``s`` of that residual added back (``residual`` only):
      ``stage 1 + s * residual``. Below 1 it moves from the model's (posterior-mean, hence smooth)
      estimate towards stage 1's texture, along the perception-distortion trade-off.
    * ``trained_modalities``: the modalities the model saw while training; any other is ``m_0``.
    * ``spatial_modalities``: modalities whose codes are also laid on the latent grid and concatenated
      with the UNet input (:mod:`mmsr.spatial`; opt-in, ``train --spatial-modalities``); ``in_channels`` grows by
      ``code_channels`` each. Empty (the paper): maps reach the UNet through the connector only.
    """

    model_cpu_offload_seq = "text_encoder->connector->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL | PixelShuffleAutoencoder,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        vqmodel: VQModel | PatchCodebook,
        condition_embedding: ConditionEmbedding,
        connector: MMLConnector,
        text_encoder,
        tokenizer,
        stage1: str | None = None,
        residual: bool = False,
        trained_modalities: list | tuple = MODALITIES,
        spatial_modalities: list | tuple = (),
        residual_scale: float = 1.0,
    ):
        super().__init__()
        if stage1 not in STAGE1_MODELS:
            raise ValueError(f"unknown stage1 {stage1!r}; choose one of {list(STAGE1_MODELS)}")
        unknown = set(spatial_modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown spatial modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        self.register_to_config(
            stage1=stage1,
            residual=residual,
            trained_modalities=list(trained_modalities),
            spatial_modalities=list(spatial_modalities),
            residual_scale=float(residual_scale),
        )
        self._check_residual_scale(residual_scale)
        self._restorer = None
        self.register_modules(
            vae=vae,
            unet=unet,
            scheduler=scheduler,
            vqmodel=vqmodel,
            condition_embedding=condition_embedding,
            connector=connector,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
        self.vae_scale_factor = getattr(vae, "downsample_factor", None) or 2 ** (len(vae.config.block_out_channels) - 1)
        self.modality_tokenizer = ModalityTokenizer(vqmodel, condition_embedding.config.dim)
        expected = 2 * unet.config.out_channels + (
            len(spatial_modalities) * code_channels(vqmodel) if spatial_modalities else 0
        )
        if unet.config.in_channels != expected:
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} input channels; noisy + LR latent and "
                f"{len(spatial_modalities)} spatial modalities need {expected}"
            )

    @property
    def unet_factor(self) -> int:
        """The UNet's total downsampling: latent sides (and latent tiles) are multiples of this."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def lr_multiple(self) -> int:
        """LR sides are padded to a multiple of this so the 4x latent fits every UNet level."""
        return max(1, self.vae_scale_factor * self.unet_factor // SCALE)

    @property
    def text_max_length(self) -> int:
        return min(77, self.tokenizer.model_max_length)

    # -- conditioning ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Text hidden states ``(B, L, D)``; captions longer than the encoder window are truncated with a warning."""
        warnings = []
        full = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        for ids in full:
            if len(ids) > self.text_max_length:
                kept = self.tokenizer.decode(ids[1 : self.text_max_length - 1])
                warnings.append(
                    f"caption is {len(ids)} tokens; the text encoder reads {self.text_max_length}, "
                    f"so it was cut after: ...{kept[-60:]!r}"
                )
        inputs = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.text_max_length, truncation=True, return_tensors="pt"
        )
        device = self.text_encoder.device
        mask = inputs.get("attention_mask") if self.text_encoder.config.model_type != "clip_text_model" else None
        hidden = self.text_encoder(
            inputs["input_ids"].to(device), attention_mask=None if mask is None else mask.to(device)
        )[0]
        for w in warnings:
            logger.warning(w)
        return hidden, warnings

    @torch.no_grad()
    def encode_modalities(self, maps: dict[str, torch.Tensor | None]) -> list[torch.Tensor | None]:
        """``{name: (B, 3, 256, 256) in [0, 1] or None}`` -> tokens per modality in ``MODALITIES`` order."""
        unknown = set(maps) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected {MODALITIES}")
        device = self.vqmodel.device
        return [
            None if maps.get(name) is None else self.modality_tokenizer(maps[name].to(device) * 2 - 1)
            for name in MODALITIES
        ]

    @torch.no_grad()
    def encode_condition(
        self,
        text: torch.Tensor,
        modality_tokens: list[torch.Tensor | None],
        temperatures: torch.Tensor | None = None,
        null_modalities: bool = False,
        include_modalities: bool = True,
    ) -> torch.Tensor:
        """Condition sequence -> MMLC -> ``(B, N, D)`` ``encoder_hidden_states``."""
        tokens = [None] * len(MODALITIES) if null_modalities else modality_tokens
        sequence, groups = self.condition_embedding(tokens, text.to(self.dtype), include_modalities)
        return self.connector(sequence, groups, temperatures)

    # -- latents ----------------------------------------------------------------------------------

    def pad_lr(self, lr: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pad (reflect, replicate for tiny inputs) to ``lr_multiple``; never resample."""
        h, w = lr.shape[-2:]
        m = self.lr_multiple
        ph, pw = -h % m, -w % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            lr = F.pad(lr, (0, pw, 0, ph), mode=mode)
        return lr, (h * SCALE, w * SCALE)

    def latent_size(self, lr_padded: torch.Tensor) -> list[int]:
        """``[H, W]`` of the latent of a :meth:`pad_lr` output: the 4x image over the VAE's downsampling."""
        return [SCALE * s // self.vae_scale_factor for s in lr_padded.shape[-2:]]

    @torch.no_grad()
    def restore(self, lr: torch.Tensor) -> torch.Tensor:
        """Stage 1: ``(B, 3, h, w)`` -> ``(B, 3, 4h, 4w)`` in [0, 1], rounded to 8 bits as its PNG would be.

        The restorer loads once, on first use; the engine passes its cached result instead.
        """
        from baselines.realesrgan import upscale_tiled

        if self._restorer is None:
            from baselines import get_baseline

            self._restorer = get_baseline(STAGE1_MODELS[self.config.stage1], device=lr.device)
        model = self._restorer.load()
        settings = self._restorer.make_settings()
        sr = upscale_tiled(model, lr, scale=SCALE, tile=settings.tile, tile_pad=settings.tile_pad)
        return (sr.float().clamp(0, 1) * 255).round() / 255

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """VAE latent ``(B, C, H/f, W/f)`` of an HR-size image in [0, 1]: the concatenated LR condition.

        Scaled by ``scaling_factor`` except with ``residual``, where the scale belongs to the residual.
        """
        latent = self.vae.encode(image.to(self.vae.device, self.vae.dtype) * 2 - 1).latent_dist.mode()
        return latent if self.config.residual else latent * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_lr(self, lr: torch.Tensor) -> torch.Tensor:
        """Bicubic x4 of the LR, VAE-encoded: ``(B, C, 4h/f, 4w/f)`` (the paper's LR condition)."""
        return self.encode_image(F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False).clamp(0, 1))

    def condition_latent(self, lr_padded: torch.Tensor, stage1: torch.Tensor | None) -> torch.Tensor:
        """Bicubic (the paper) or, with a stage 1, its output padded like the LR, VAE-encoded."""
        if stage1 is None:
            return self.encode_lr(lr_padded)
        ph, pw = (SCALE * p - s for p, s in zip(lr_padded.shape[-2:], stage1.shape[-2:]))
        if ph or pw:
            mode = "reflect" if ph < stage1.shape[-2] and pw < stage1.shape[-1] else "replicate"
            stage1 = F.pad(stage1, (0, pw, 0, ph), mode=mode)
        return self.encode_image(stage1)

    def prepare_latents(
        self, lr_latent: torch.Tensor, generator: torch.Generator | None, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pure noise, or (``start`` given, ``strength < 1``) the LR latent (a zero residual) noised to ``start``."""
        shape = (lr_latent.shape[0], self.unet.config.out_channels, *lr_latent.shape[-2:])
        noise = randn_tensor(shape, generator=generator, device=lr_latent.device, dtype=lr_latent.dtype)
        if start is None:
            return noise * self.scheduler.init_noise_sigma
        clean = torch.zeros_like(noise) if self.config.residual else lr_latent
        return self.scheduler.add_noise(clean, noise, start.reshape(1))

    def get_timesteps(self, num_inference_steps: int, strength: float, device) -> torch.Tensor:
        """The schedule's last ``strength`` fraction (at least one step): ``strength = 1`` is the full chain."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        return timesteps[min(len(timesteps) - 1, round(len(timesteps) * (1 - strength))) :]

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, lr_latent: torch.Tensor | None = None, residual_scale: float = 1.0
    ) -> torch.Tensor:
        """Latents -> image in [0, 1]; with ``residual``, ``residual_scale`` times the generated residual is
        added to ``lr_latent`` (with ``lite``'s linear pixel-unshuffle autoencoder, exactly so in pixels)."""
        latents = latents / self.vae.config.scaling_factor
        if self.config.residual:
            latents = residual_scale * latents + lr_latent
        image = self.vae.decode(latents).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    # -- sampling ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_spatial(
        self,
        spatial_maps: dict[str, torch.Tensor | None],
        latent_hw: Sequence[int],
        out_hw: Sequence[int],
        temperatures: dict[str, float] | None,
        batch_size: int,
    ) -> torch.Tensor | None:
        """The spatial codes of ``spatial_maps`` (:mod:`mmsr.spatial`), ``None`` without ``spatial_modalities``;
        a modality the checkpoint was not trained with is ``m_0``."""
        names = self.config.spatial_modalities
        if not names:
            return None
        trained = self.config.trained_modalities
        maps = {k: v for k, v in spatial_maps.items() if k in trained}
        return spatial_codes(
            self.vqmodel, maps, names, latent_hw, out_hw, self.vae_scale_factor, temperatures, batch_size
        ).to(self.unet.dtype)

    def predict_noise(self, x: torch.Tensor, t, cond: torch.Tensor, tile: int | None) -> torch.Tensor:
        """UNet eps for ``x`` ``(B, in_channels, H, W)``; with ``tile``, over overlapping latent tiles, blended."""

        def unet(crop: torch.Tensor) -> torch.Tensor:
            return self.unet(crop, t, encoder_hidden_states=cond).sample

        overlap = default_overlap(tile, self.unet_factor) if tile else 0
        return tiled_apply(unet, x, tile, overlap, self.unet_factor)

    def _check_residual_scale(self, residual_scale: float) -> None:
        if not (math.isfinite(residual_scale) and residual_scale >= 0):
            raise ValueError(f"residual_scale must be a finite number >= 0, got {residual_scale}")
        if residual_scale != 1 and not self.config.residual:
            raise ValueError(
                "residual_scale needs a residual pipeline (one with a stage 1, e.g. lite); this one has none"
            )

    def check_inputs(
        self, lr: torch.Tensor, guidance_scale: float, num_inference_steps: int, strength: float, num_samples: int = 1
    ) -> None:
        """What the model itself can run. The product's narrower ranges are ``mmsr.settings.SPECS``."""
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"LR image must be a (B, 3, h, w) tensor, got shape {tuple(lr.shape)}")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance_scale}")
        train_steps = self.scheduler.config.num_train_timesteps
        if not 1 <= num_inference_steps <= train_steps:
            raise ValueError(f"steps must lie in [1, {train_steps}] (the schedule's length), got {num_inference_steps}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must lie in (0, 1], got {strength}")
        if not (isinstance(num_samples, int) and num_samples >= 1):
            raise ValueError(f"num_samples must be a whole number >= 1, got {num_samples!r}")

    def temperature_tensor(self, temperatures: dict[str, float] | None) -> torch.Tensor | None:
        """``{"depth": 0.5, ...}`` -> ``(4,)`` tau per group (text last, 1 unless ``"text"`` is given)."""
        if not temperatures:
            return None
        unknown = set(temperatures) - {*MODALITIES, "text"}
        if unknown:
            raise ValueError(f"temperatures for unknown modalities {sorted(unknown)}")
        taus = [float(temperatures.get(name, 1.0)) for name in (*MODALITIES, "text")]
        assert len(taus) == TEXT_GROUP + 1
        return check_temperatures(torch.tensor(taus))

    @torch.no_grad()
    def __call__(
        self,
        lr: torch.Tensor,
        prompt: str | Sequence[str] = "",
        maps: dict[str, torch.Tensor | None] | None = None,
        modality_tokens: list[torch.Tensor | None] | None = None,
        negative_prompt: str | Sequence[str] = "",
        cfg_mode: str = "m-cfg",
        guidance_scale: float = 4.0,
        num_inference_steps: int = 50,
        temperatures: dict[str, float] | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int], None] | None = None,
        latent_tile: int | None = None,
        strength: float = 1.0,
        stage1: torch.Tensor | None = None,
        num_samples: int = 1,
        spatial_maps: dict[str, torch.Tensor | None] | None = None,
        residual_scale: float | None = None,
    ) -> MMSRPipelineOutput:
        """Args:
        lr: ``(B, 3, h, w)`` in [0, 1]. Output is ``(B, 3, 4h, 4w)``.
        prompt / negative_prompt: captions (one, or one per batch item).
        maps: ``{"depth"|"seg"|"edges": (B, 3, 256, 256) in [0, 1] or None}``; missing = ``m_0``.
        modality_tokens: precomputed :meth:`encode_modalities` output (skips the tokenizer; for caches).
        cfg_mode: ``m-cfg``, ``m0-cfg`` or ``cfg`` (see :mod:`mmsr.guidance`).
        guidance_scale: ``w`` of eq. (4); 0 runs the positive branch only.
        temperatures: tau per modality in [0.4, 10] (eq. 5).
        callback: ``callback(step, total)`` after every denoising step (raise to cancel).
        strength: 1 (the paper) denoises from pure noise; below 1 starts from the LR latent noised to that
            fraction of the schedule and runs only that fraction of the steps (SDEdit-style; the lite
            preset uses it, see ``Preset.default_strength``).
        latent_tile: denoise in overlapping latent tiles of this side (blended, seam-free); ``None`` =
            only when the latent exceeds ``tiling.AUTO_TILE_ABOVE``, ``0`` = never. Outputs above
            ``tiling.VAE_TILE_ABOVE`` pixels also go through the VAE in tiles.
        stage1: ``(B, 3, 4h, 4w)`` precomputed stage-1 output (pipelines with a ``stage1`` only; computed
            here when ``None``). Modalities the checkpoint was not trained with are ``m_0``.
        spatial_maps: ``{name: (B, 3, H, W) in [0, 1] or None}`` at the output size (any size of its
            aspect is drawn to it), for a pipeline with ``spatial_modalities``; default ``maps``
            stretched to the output. Missing = ``m_0``.
        num_samples: the output is the mean of this many samples drawn from independent noise in one
            batched run: a Monte Carlo estimate of the posterior mean. With one x0-prediction step from
            pure noise (``lite``) each sample is the model's E[x0 | condition] plus the noise the model
            failed to ignore; averaging removes that grain (``Preset.default_samples``).
        residual_scale: the share of the generated residual added to the stage-1 image (``residual``
            pipelines only); ``None`` = the checkpoint's ``residual_scale``.
        """
        # 1. Check inputs
        self.check_inputs(lr, guidance_scale, num_inference_steps, strength, num_samples)
        residual_scale = self.config.residual_scale if residual_scale is None else float(residual_scale)
        self._check_residual_scale(residual_scale)
        negative = negative_branch(cfg_mode)
        taus = self.temperature_tensor(temperatures)
        device = self._execution_device
        timer = StageTimer(device)
        b = lr.shape[0]
        prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * b if isinstance(negative_prompt, str) else list(negative_prompt)
        do_cfg = guidance_scale > 0

        # 2. Encode the condition: text, modality tokens, connector (positive and negative branch)
        with timer("text_encoder"):
            text, warnings = self.encode_prompt(prompts + negatives if do_cfg else prompts)
        with timer("tokenizer"):
            if modality_tokens is None:
                modality_tokens = self.encode_modalities(maps or {})
            trained = self.config.trained_modalities
            modality_tokens = [t if m in trained else None for m, t in zip(MODALITIES, modality_tokens)]
        with timer("connector"):
            cond = self.encode_condition(text[:b], modality_tokens, taus)
            if do_cfg:
                uncond = self.encode_condition(text[b:], modality_tokens, taus, **negative)
                cond = torch.cat([uncond.repeat(num_samples, 1, 1), cond.repeat(num_samples, 1, 1)])
            else:
                cond = cond.repeat(num_samples, 1, 1)

        # 3. Stage 1, LR latent and initial noise (the VAE works in tiles for large outputs)
        lr = lr.to(device, torch.float32)
        if self.config.stage1 is not None and stage1 is None:
            with timer("stage1"):
                stage1 = self.restore(lr)
        lr_padded, out_size = self.pad_lr(lr)
        output_side = SCALE * max(lr_padded.shape[-2:])
        latent_hw = self.latent_size(lr_padded)
        tile = resolve_tile(*latent_hw, latent_tile, self.unet_factor)
        with timer("vae_encode"), vae_tiling(self.vae, output_side):
            stage1 = None if self.config.stage1 is None else stage1.to(device, torch.float32)
            lr_latent = self.condition_latent(lr_padded, stage1).to(self.unet.dtype)
            lr_latent = lr_latent.repeat(num_samples, 1, 1, 1)  # sample k of item i at k * B + i
        timesteps = self.get_timesteps(num_inference_steps, strength, device)
        latents = self.prepare_latents(lr_latent, generator, timesteps[0] if strength < 1 else None)
        lr_latent_in = torch.cat([lr_latent] * 2) if do_cfg else lr_latent
        spatial = None
        if self.config.spatial_modalities:
            with timer("spatial"):
                given = (maps or {}) if spatial_maps is None else spatial_maps
                spatial = self.encode_spatial(given, latent_hw, out_size, temperatures, b)
        if spatial is not None:
            spatial = spatial.repeat(num_samples, 1, 1, 1)
            if do_cfg:  # the negative branch's maps: kept by m-cfg, m_0 (zeros) for m0-cfg and cfg
                kept = not negative.get("null_modalities") and negative.get("include_modalities", True)
                spatial = torch.cat([spatial if kept else torch.zeros_like(spatial), spatial])
            lr_latent_in = torch.cat([lr_latent_in, spatial], dim=1)

        # 4. Denoise (positive and negative branches in one batched UNet call; large latents in tiles)
        with timer("unet"):
            for i, t in enumerate(self.progress_bar(timesteps)):
                x = torch.cat([latents] * 2) if do_cfg else latents
                x = torch.cat([self.scheduler.scale_model_input(x, t), lr_latent_in], dim=1)
                eps = self.predict_noise(x, t, cond, tile)
                if do_cfg:
                    eps_neg, eps_pos = eps.chunk(2)
                    eps = combine(eps_pos, eps_neg, guidance_scale)
                latents = self.scheduler.step(eps, t, latents, generator=generator).prev_sample
                if callback is not None:
                    callback(i + 1, len(timesteps))
        timer.seconds["unet_step"] = timer.seconds["unet"] / max(1, len(timesteps))

        # 5. Decode and crop the padding away
        with timer("vae_decode"), vae_tiling(self.vae, output_side):
            images = self.decode(latents, lr_latent, residual_scale)[..., : out_size[0], : out_size[1]]
            images = images.reshape(num_samples, b, *images.shape[1:]).mean(0)
        self.maybe_free_model_hooks()
        return MMSRPipelineOutput(images=images, timings=timer.seconds, warnings=warnings)
