"""Stage ``unet``: the MMSR UNet + connector + ``m_0`` with the diffusion loss (paper sec. 3.4).

Everything frozen runs once, before training, over whole photos (the *cache*):

* per photo, ``lr_variants`` LR versions (second-order degradations, the last one plain bicubic)
  and the image the UNet is conditioned on for each: the frozen stage 1 (``lite``: Real-ESRGAN,
  read from the stage-1 folder of :mod:`mmsr.training.stage1`) or the bicubic upsample (the paper);
* latents of the HR photo and of each condition image;
* the modality maps **as inference makes them**: Canny edges of the bicubic-upsampled LR version
  (the extractor the engine runs), the photo's VOC label map from ``DATA/seg`` where there is one,
  else ``m_0``; depth has no offline source and is never trained (``trained_modalities``). Maps are
  drawn at ``256 / crop`` map pixels per HR pixel, so an HR crop has exactly the 256x256 map and
  16x16 tokens it would have on its own (at 128 px crops, token ``(i, j)`` lies over latent
  ``(i, j)``). A :class:`~mmsr.tokenizer.PatchCodebook` tokenizer is fitted here, by k-means over
  these maps, before their code indices are stored;
* text hidden states of every distinct caption (and of the empty caption).

A training sample is then a random window of those grids: no encoder runs in the loop, which is
what makes training on two CPU cores possible. With ``residual`` the target is
``scaling_factor * (HR latent - condition latent)``, so a zero output returns the condition image.

Timesteps: a fraction ``sampler_weight`` of each batch is drawn from the timesteps the preset's
sampler actually visits (``lite``: one trailing step, ``t = 999``, pure noise), the rest uniformly
from all of them, as few-step samplers are trained (ResShift trains only on its 15 steps). Uniform
sampling alone puts 0.1% of the updates on the one step ``lite`` runs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image
from torch import nn

from ..conditioning import MODALITIES
from ..constants import SCALE
from ..modalities.edges import canny_edges
from ..modalities.palette import label_colours
from ..pipeline import MMSRPipeline
from ..spatial import code_channels, lookup_codes
from ..tokenizer import PatchCodebook
from . import stage1 as stage1_cache
from .autoencoder import PatchDiscriminator, hinge_d_loss
from .data import ImageBank, to_tensor
from .loop import to_device

TOKENS = 16  # a 256 px map -> 16x16 tokens
SEG, EDGES = MODALITIES.index("seg"), MODALITIES.index("edges")
KMEANS_SAMPLES = 200_000  # map patches the k-means codebook is fitted on


class SRDenoiser(nn.Module):
    """``condition_embedding`` + ``connector`` + ``unet`` as one module (one forward for DDP).

    ``forward(x, t, text, tokens, keep)``: ``x`` ``(B, 2C, h, w)`` = cat(noisy latent, LR latent);
    ``text`` ``(B, L, D)``; ``tokens`` one ``(B, 256, D)`` tensor or ``None`` per modality; ``keep``
    ``(B, 3)`` bool, ``False`` puts ``m_0`` in that sample's modality (dropout, missing maps).
    """

    def __init__(self, unet, connector, condition_embedding):
        super().__init__()
        self.unet, self.connector, self.condition_embedding = unet, connector, condition_embedding

    def forward(self, x, t, text, tokens, keep):
        b = x.shape[0]
        null = self.condition_embedding.null_tokens(b)
        mixed = [
            None if tok is None else torch.where(keep[:, k, None, None], tok, null) for k, tok in enumerate(tokens)
        ]
        sequence, groups = self.condition_embedding(mixed, text)
        cond = self.connector(sequence, groups)
        return self.unet(x, t, encoder_hidden_states=cond).sample


@dataclass
class PhotoLatents:
    hr: torch.Tensor  # (C, h, w) float16
    lr: torch.Tensor  # (V, C, h, w) float16: latents of the condition images (stage 1 or bicubic)
    seg: torch.Tensor | None  # (h', w') code indices
    edges: torch.Tensor  # (V, h', w') code indices, one map per LR version
    caption: int


@dataclass
class PhotoMaps:
    """One photo's images and maps before tokenization (uint8, HR size)."""

    hr: np.ndarray
    conditions: list[np.ndarray]
    edges: list[np.ndarray]
    seg: np.ndarray | None  # VOC palette colours
    caption: int


def _up(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def lr_edges(lr: np.ndarray) -> np.ndarray:
    """Edges of an LR version exactly as the engine extracts them: Canny of the bicubic x4 upsample."""
    image = Image.fromarray(lr)
    up = image.resize((image.width * SCALE, image.height * SCALE), Image.BICUBIC)
    return canny_edges(np.asarray(up))


@torch.no_grad()
def map_features(pipe: MMSRPipeline, rgb_map: np.ndarray, map_scale: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 map at HR size -> the tokenizer's ``(C, H', W')`` features of its map-scale drawing."""
    vq = pipe.vqmodel
    x = to_tensor([_up(rgb_map, map_scale)]).to(vq.device, vq.dtype) * 2 - 1
    return vq.encode(x).latents[0]


@torch.no_grad()
def code_indices(pipe: MMSRPipeline, features: torch.Tensor) -> torch.Tensor:
    """``(C, h, w)`` features -> ``(h, w)`` code indices, as the tokenizer quantizes."""
    _, _, (_, _, idx) = pipe.vqmodel.quantize(features[None])
    return idx.reshape(features.shape[-2:]).to(torch.int16).cpu()


def fft_amplitude_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance of the Fourier amplitudes of two image batches: texture energy, wherever it lies."""
    return (torch.fft.rfft2(a, norm="ortho").abs() - torch.fft.rfft2(b, norm="ortho").abs()).abs().mean()


class UNetStage:
    """Train ``unet`` + ``connector`` + ``condition_embedding`` (``m_0``) on cached latents.

    ``text_only=True`` trains the text-only twin: every modality is ``m_0``, always.
    ``stage1_dir``: the stage-1 folder (pipelines with a ``stage1``; missing photos are built here).
    """

    name = "unet"
    discriminator = None

    def __init__(
        self,
        components: dict,
        bank: ImageBank,
        crop: int = 128,
        text_only: bool = False,
        cache: Path | None = None,
        lr_variants: int = 2,
        seed: int = 0,
        ema: bool = True,
        modality_dropout: float = 0.1,
        caption_dropout: float = 0.1,
        fp16_weights: bool = False,
        stage1_dir: Path | None = None,
        sampler_steps: int | None = None,
        sampler_strength: float = 1.0,
        sampler_weight: float = 0.0,
        val_photos: int = 0,
        fft_weight: float = 0.0,
        hr_edge_fraction: float = 0.0,
        adv_weight: float = 0.0,
    ):
        if crop % 8 or 256 % crop:
            raise ValueError(f"--crop must be a multiple of 8 that divides 256 (64, 128, 256), got {crop}")
        self.pipe = MMSRPipeline(**components)
        if self.pipe.config.spatial_modalities and crop != TOKENS * self.pipe.vae_scale_factor:
            raise ValueError(
                f"spatial codes need one token per latent pixel: --crop {TOKENS * self.pipe.vae_scale_factor}"
            )
        self.pipe.set_progress_bar_config(disable=True)
        for part in (self.pipe.vae, self.pipe.vqmodel, self.pipe.text_encoder):
            part.requires_grad_(False).eval()
        if text_only:
            self.pipe.register_to_config(trained_modalities=[])
        self.model = SRDenoiser(components["unet"], components["connector"], components["condition_embedding"]).train()
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        if not 0 <= sampler_weight <= 1:
            raise ValueError(f"sampler_weight must lie in [0, 1], got {sampler_weight}")
        self.sampler_weight = sampler_weight
        # image-space terms on the x0 prediction: they need lite's x0-prediction on pixel-unshuffle latents
        # (the adversarial one also a residual, to draw stage 1 + residual)
        x0_pixels = self.pipe.scheduler.config.prediction_type == "sample" and hasattr(
            self.pipe.vae, "downsample_factor"
        )
        for name, weight, needs in (
            ("fft", fft_weight, x0_pixels),
            ("adv", adv_weight, x0_pixels and self.pipe.config.residual),
        ):
            if weight < 0:
                raise ValueError(f"{name}_weight must be >= 0, got {weight}")
            if weight and not needs:
                raise ValueError(
                    f"--{name}-weight needs x0-prediction of a residual on a pixel-unshuffle latent (lite)"
                )
        self.fft_weight, self.adv_weight = fft_weight, adv_weight
        if adv_weight:  # judges an image next to its stage-1 condition (pix2pix), so texture must fit the input
            self.discriminator = PatchDiscriminator(in_channels=6)
        if not 0 <= hr_edge_fraction <= 1:
            raise ValueError(f"hr_edge_fraction must lie in [0, 1], got {hr_edge_fraction}")
        self.hr_edge_fraction = hr_edge_fraction
        self.hr_edges: list[torch.Tensor] = []
        self.sampler_timesteps = (
            self.pipe.get_timesteps(sampler_steps, sampler_strength, "cpu") if sampler_steps else None
        )
        self.bank, self.window = bank, crop // self.pipe.vae_scale_factor
        self.text_only, self.cache, self.lr_variants, self.seed = text_only, cache, lr_variants, seed
        self.stage1_dir = stage1_dir
        self.ema, self.fp16_weights = ema, fp16_weights
        self.modality_dropout, self.caption_dropout = modality_dropout, caption_dropout
        self.photos: list[PhotoLatents] = []
        self.val_photos = val_photos
        self.train_ids = self.val_ids = np.zeros(0, dtype=int)
        self.text: torch.Tensor | None = None
        self.scale = 1.0  # residual scaling factor (set from the cache)

    # -- cache --------------------------------------------------------------------------------

    def prepare(self, accelerator, out: Path) -> None:
        """Build (main process, once) or load the latent cache (``--cache`` or ``OUT/cache.pt``)."""
        path = self.cache or out / "cache.pt"
        if accelerator.is_main_process and not path.is_file():
            self.pipe.to(accelerator.device)
            tmp = path.with_suffix(".tmp")
            torch.save(self.build_cache(), tmp)
            tmp.replace(path)  # atomic: a twin run waiting for the file never reads half of it
        accelerator.wait_for_everyone()
        with torch.serialization.safe_globals([PhotoLatents]):  # our own cache, and still no arbitrary unpickling
            data = torch.load(path, weights_only=True)
        self.photos, self.text = data["photos"], data["text"].to(accelerator.device)
        self.split(self.val_photos)
        self.empty_caption = data["captions"].index("")
        if data.get("codebook") is not None:
            self.pipe.vqmodel.quantize.embedding.weight.data.copy_(data["codebook"])
        if self.pipe.config.residual:
            self.scale = float(data["scaling_factor"])
            self.pipe.vae.register_to_config(scaling_factor=self.scale)
        if accelerator.is_main_process:
            (out / "tokenizer.json").write_text(json.dumps(data.get("tokenizer", {}), indent=2))
        if self.hr_edge_fraction:
            self.hr_edges = self.load_hr_edges(accelerator, path.with_name(path.stem + ".hr_edges.pt"))

    def load_hr_edges(self, accelerator, path: Path) -> list[torch.Tensor]:
        """Every photo's edge codes from its HR image (``--hr-edge-fraction``), built once next to the cache.

        The same extractor as at inference (Canny), run on the HR photo instead of its bicubic-upsampled
        LR: a map that knows more than the LR does, so the model learns that an edge map is worth reading.
        """
        if accelerator.is_main_process and not path.is_file():
            self.pipe.to(accelerator.device)
            map_scale = 256 // (self.window * self.pipe.vae_scale_factor)
            codes = []
            for sample in self.bank.samples:
                hr = self.photo_maps(sample, 0, self.seed).hr
                edges = np.repeat(canny_edges(hr)[..., None], 3, axis=2)
                codes.append(code_indices(self.pipe, map_features(self.pipe, edges, map_scale)))
            tmp = path.with_suffix(".tmp")
            torch.save(codes, tmp)
            tmp.replace(path)
        accelerator.wait_for_everyone()
        codes = torch.load(path, weights_only=True)
        if len(codes) != len(self.photos) or any(
            c.shape != p.edges.shape[-2:] for c, p in zip(codes, self.photos, strict=True)
        ):
            raise ValueError(f"{path} does not match the cache: delete it to rebuild")
        return codes

    def photo_maps(self, sample, caption: int, map_seed: int) -> PhotoMaps:
        """HR, condition images and edge/seg maps of one photo, all at HR size."""
        if self.pipe.config.stage1 is not None:
            if not stage1_cache.photo_file(self.stage1_dir, sample.key).is_file():
                raise ValueError(f"stage-1 cache {self.stage1_dir} lacks {sample.key}: build it first")
            stored = stage1_cache.load(self.stage1_dir, sample.key)
            hr, lrs, conditions = stored["hr"], list(stored["lr"]), list(stored["stage1"])
            y, x = (int(v) for v in stored.get("origin", (0, 0)))  # the window the cache kept
            if not np.array_equal(sample.image[y : y + hr.shape[0], x : x + hr.shape[1]], hr):
                raise ValueError(
                    f"stage-1 cache {self.stage1_dir} does not match {sample.key}: build it with this --max-side"
                )
        else:
            (y, x), hr = (0, 0), stage1_cache.crop_to_multiple(sample.image)
            lrs = stage1_cache.lr_versions(hr, self.lr_variants, stage1_cache.photo_seed(sample.key, map_seed))
            conditions = [np.asarray(Image.fromarray(lr).resize(hr.shape[1::-1], Image.BICUBIC)) for lr in lrs]
        h, w = hr.shape[:2]
        edges = [np.repeat(lr_edges(lr)[:h, :w, None], 3, axis=2) for lr in lrs]
        seg = None
        if sample.seg is not None:
            seg = label_colours(sample.seg[y : y + h, x : x + w])
        return PhotoMaps(hr, conditions, edges, seg, caption)

    def build_cache(self) -> dict:
        captions = sorted(set(self.bank.captions) | {""})
        text = torch.cat([self.pipe.encode_prompt(captions[i : i + 32])[0].cpu() for i in range(0, len(captions), 32)])
        map_scale = 256 // (self.window * self.pipe.vae_scale_factor)
        maps = [self.photo_maps(s, captions.index(s.caption), self.seed) for s in self.bank.samples]
        tokenizer = self.fit_tokenizer(maps, map_scale)
        photos, residuals = [], []
        for m in maps:
            hr = self.pipe.encode_image(to_tensor([m.hr]))[0]
            cond = self.pipe.encode_image(to_tensor(m.conditions))
            residuals.append((hr - cond[0]).flatten()[::97])
            edges = torch.stack([code_indices(self.pipe, map_features(self.pipe, e, map_scale)) for e in m.edges])
            seg = None if m.seg is None else code_indices(self.pipe, map_features(self.pipe, m.seg, map_scale))
            photos.append(PhotoLatents(hr.half(), cond.half(), seg, edges, m.caption))
        std = float(torch.cat(residuals).std())
        return {
            "photos": photos,
            "text": text,
            "captions": captions,
            "scaling_factor": 1.0 / std if self.pipe.config.residual else None,
            "codebook": self.pipe.vqmodel.quantize.embedding.weight.detach().cpu().clone(),
            "tokenizer": tokenizer,
        }

    def fit_tokenizer(self, maps: list[PhotoMaps], map_scale: int) -> dict:
        """k-means for a :class:`PatchCodebook` over patches of the training maps; reports its fit."""
        if not isinstance(self.pipe.vqmodel, PatchCodebook):
            return {}
        rng = np.random.default_rng(self.seed)
        features = []
        for m in maps:
            for rgb in [*m.edges, *([m.seg] if m.seg is not None else [])]:
                f = map_features(self.pipe, rgb, map_scale)
                features.append(f.flatten(1).T)
        features = torch.cat(features)
        pick = torch.from_numpy(rng.choice(len(features), size=min(KMEANS_SAMPLES, len(features)), replace=False))
        report = self.pipe.vqmodel.fit(features[pick], seed=self.seed)
        idx = torch.cat([self.pipe.vqmodel.quantize.indices(f) for f in features.split(65536)])
        codes = self.pipe.vqmodel.quantize.embedding.weight
        mse = float(
            torch.cat([(f - codes[i]).pow(2).mean(1) for f, i in zip(features.split(65536), idx.split(65536))]).mean()
        )
        report.update(patches=len(features), all_mse=mse, psnr_db=float(10 * np.log10(4.0 / mse)))
        report["codes_used_all"] = int(torch.bincount(idx, minlength=len(codes)).gt(0).sum())
        print(f"tokenizer fit: {report}", flush=True)
        return report

    # -- batches ------------------------------------------------------------------------------

    def next_batch(self, batch_size: int, rng: np.random.Generator) -> dict:
        w = self.window
        crops = []
        for i in rng.choice(self.train_ids, size=batch_size):
            p = self.photos[i]
            h, wd = p.hr.shape[-2:]
            y, x = int(rng.integers(0, h - w + 1)), int(rng.integers(0, wd - w + 1))
            v = int(rng.integers(0, len(p.lr)))
            drop = rng.random(3) < self.modality_dropout
            caption = self.empty_caption if rng.random() < self.caption_dropout else p.caption
            # an HR edge map instead of the LR's (drawn only when asked, so older runs keep their stream)
            hr_edges = self.hr_edge_fraction > 0 and rng.random() < self.hr_edge_fraction
            maps = (p.seg, self.hr_edges[i], y, x) if hr_edges else None
            crops.append((p, y, x, v, caption, (not drop[SEG], not drop[EDGES]), maps))
        return self.collate(crops, noise_seed=int(rng.integers(0, 2**31)))

    def collate(self, crops: list, noise_seed: int) -> dict:
        """A batch from ``(photo, y, x, lr_variant, caption, (keep_seg, keep_edges)[, maps])`` latent-window crops.

        ``maps``, when given and not ``None``, is ``(seg_codes, edge_codes, y, x)``: code grids to read instead
        of the photo's own, and the window's latent origin in them (the HR photo's edges, another photo's maps).
        """
        w = self.window
        r = TOKENS // w  # token rows per latent row
        hr, lr, tokens, windows, captions, keep = [], [], [[], []], [[], []], [], []
        codebook = self.pipe.vqmodel.quantize.embedding.weight
        for p, y, x, v, caption, (keep_seg, keep_edges), *maps in crops:
            hr.append(p.hr[:, y : y + w, x : x + w].float())
            lr.append(p.lr[v, :, y : y + w, x : x + w].float())
            seg, edges, my, mx = maps[0] if maps and maps[0] is not None else (p.seg, p.edges[v], y, x)
            for j, idx in enumerate((seg, edges)):
                if idx is None:
                    window = torch.zeros(TOKENS, TOKENS, dtype=torch.long)
                else:
                    window = idx[my * r : my * r + TOKENS, mx * r : mx * r + TOKENS].long()
                tokens[j].append(window.flatten())
                windows[j].append(window)
            keep.append([False, seg is not None and keep_seg, keep_edges])
            captions.append(caption)
        dim = self.model.condition_embedding.config.dim
        seg_tok, edge_tok = (F.pad(codebook[torch.stack(t)], (0, dim - codebook.shape[1])) for t in tokens)
        keep = torch.tensor(keep) & torch.tensor(not self.text_only)
        return {
            "hr": torch.stack(hr),
            "lr": torch.stack(lr),
            "tokens": [None, None, None] if self.text_only else [None, seg_tok, edge_tok],
            "keep": keep,
            "spatial": self.spatial(codebook, {"seg": windows[0], "edges": windows[1]}, keep),
            "caption": torch.tensor(captions),
            "noise_seed": noise_seed,
        }

    def spatial(self, codebook: torch.Tensor, windows: dict[str, list], keep: torch.Tensor) -> torch.Tensor | None:
        """The batch's spatial codes (:mod:`mmsr.spatial`), as the pipeline lays them on the latent grid;
        ``None`` for a pipeline without ``spatial_modalities``."""
        names = self.pipe.config.spatial_modalities
        if not names:
            return None
        b, planes = len(keep), []
        for name in names:
            if name in windows:
                planes.append(lookup_codes(codebook, torch.stack(windows[name]), keep[:, MODALITIES.index(name)]))
            else:  # depth: no offline source, always m_0
                width = code_channels(self.pipe.vqmodel)
                planes.append(torch.zeros(b, width, self.window, self.window, dtype=codebook.dtype))
        return torch.cat(planes, dim=1)

    # -- validation ---------------------------------------------------------------------------

    def split(self, val_photos: int) -> None:
        """Hold ``val_photos`` photos (drawn with the seed) out of every training batch."""
        self.val_ids, self.train_ids = held_out(len(self.photos), val_photos, self.seed)

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        """x0-MSE of held-out photos (centre crop, every LR version, all maps) at the sampler's timesteps.

        ``val`` uses each photo's caption and ``val_nocap`` the empty one, so a model that memorises
        training captions shows it here. A model with maps is also scored, with each photo's caption,
        with every map at ``m_0`` (``val_no_maps``) and with the next held-out photo's maps
        (``val_wrong_maps``, its centre window): a model that reads what its maps say does worse with
        another photo's (issue 12, requirement 2b). With ``--hr-edge-fraction``, ``val_hr_edges`` reads the
        HR photo's edges: how much an edge map that knows more than the LR could help. Lower is better;
        1.0 is "return stage 1".
        """
        if not len(self.val_ids):
            return {}
        w, device = self.window, next(model.parameters()).device
        with_maps = not self.text_only and bool(self.pipe.config.trained_modalities)
        crops = {"val": [], "val_nocap": []} | ({"val_no_maps": [], "val_wrong_maps": []} if with_maps else {})
        if with_maps and self.hr_edges:
            crops["val_hr_edges"] = []
        centre = [((p.hr.shape[-2] - w) // 2, (p.hr.shape[-1] - w) // 2) for p in self.photos]
        for n, i in enumerate(self.val_ids):
            p, (y, x) = self.photos[i], centre[i]
            other = self.val_ids[(n + 1) % len(self.val_ids)]
            q = self.photos[other]
            for v in range(len(p.lr)):
                crops["val"].append((p, y, x, v, p.caption, (True, True)))
                crops["val_nocap"].append((p, y, x, v, self.empty_caption, (True, True)))
                if with_maps:
                    crops["val_no_maps"].append((p, y, x, v, p.caption, (False, False)))
                    wrong = (q.seg, q.edges[v], *centre[other])
                    crops["val_wrong_maps"].append((p, y, x, v, p.caption, (True, True), wrong))
                if "val_hr_edges" in crops:
                    hr_maps = (p.seg, self.hr_edges[i], y, x)
                    crops["val_hr_edges"].append((p, y, x, v, p.caption, (True, True), hr_maps))
        own = self.sampler_timesteps if self.sampler_timesteps is not None else torch.tensor([999])
        was_training, out = model.training, {}
        model.eval()
        for name, rows in crops.items():
            total = 0.0
            for k in range(0, len(rows), 32):
                batch = to_device(self.collate(rows[k : k + 32], noise_seed=k), device)
                gen = torch.Generator(device).manual_seed(self.seed + k)  # the same noise every validation
                x0 = self.target(batch)
                noise = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
                t = own[torch.arange(len(x0)) % len(own)].to(device)
                total += float(self.loss_at(model, batch, x0, noise, t)) * len(x0)
            out[name] = round(total / len(rows), 6)
        model.train(was_training)
        return out

    def timesteps(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        """Uniform timesteps, a ``sampler_weight`` fraction of them replaced by the sampler's own."""
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n,), generator=gen, device=device)
        if self.sampler_timesteps is None or self.sampler_weight == 0:
            return t
        pick = torch.rand(n, generator=gen, device=device) < self.sampler_weight
        own = self.sampler_timesteps.to(device)
        own = own[torch.randint(0, len(own), (n,), generator=gen, device=device)]
        return torch.where(pick, own.to(t.dtype), t)

    def target(self, batch: dict) -> torch.Tensor:
        """The clean latent the diffusion generates: the scaled residual over the condition, or the HR latent."""
        return (batch["hr"] - batch["lr"]) * self.scale if self.pipe.config.residual else batch["hr"]

    def loss(self, model, batch: dict, step: int):
        device = batch["hr"].device
        x0 = self.target(batch)
        gen = torch.Generator(device).manual_seed(batch["noise_seed"])
        noise = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
        t = self.timesteps(x0.shape[0], gen, device)
        if not self.fft_weight and not self.adv_weight:
            mse = self.loss_at(model, batch, x0, noise, t)
            return mse, {"mse": mse.item()}, None
        mse, pred = self.loss_at(model, batch, x0, noise, t, return_prediction=True)
        total, logs, extra = mse, {"mse": mse.item()}, None
        factor = self.pipe.vae.downsample_factor  # back to the image grid
        if self.fft_weight:  # in the latent's unit-variance scale
            spectrum = fft_amplitude_loss(F.pixel_shuffle(pred.float(), factor), F.pixel_shuffle(x0.float(), factor))
            total, logs["fft"] = total + self.fft_weight * spectrum, spectrum.item()
        if self.adv_weight:  # images in [-1, 1]: the residual latent is an unscaled pixel-unshuffle
            stage1 = F.pixel_shuffle(batch["lr"].float(), factor)
            real = torch.cat([stage1, F.pixel_shuffle(batch["hr"].float(), factor)], dim=1)
            fake = torch.cat([stage1, F.pixel_shuffle(batch["lr"].float() + pred.float() / self.scale, factor)], dim=1)
            # the same random 0-7 pixel shift of both: the PatchGAN's stride-8 windows would otherwise sit in
            # phase with the 8x8 unshuffle blocks and let seams between blocks pass as texture
            shift = torch.randint(0, factor, (2,), generator=torch.Generator().manual_seed(batch["noise_seed"] + 1))
            dy, dx = (int(v) for v in shift)
            crop = (..., slice(dy, real.shape[-2] - factor + dy), slice(dx, real.shape[-1] - factor + dx))
            real, fake = real[crop], fake[crop]
            self.discriminator.requires_grad_(False)
            g = -self.discriminator(fake).mean()
            self.discriminator.requires_grad_(True)
            total, logs["g_adv"], extra = total + self.adv_weight * g, g.item(), (real, fake.detach())
        return total, logs, extra

    def disc_loss(self, disc, extra, step: int):
        """Hinge loss of the PatchGAN (``--adv-weight``) on the step's real and generated images."""
        if extra is None:
            return None, {}
        real, fake = extra
        d = hinge_d_loss(disc(real), disc(fake))
        return d, {"d_loss": d.item()}

    def loss_at(
        self,
        model,
        batch: dict,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        return_prediction: bool = False,
    ):
        """MSE of the model's prediction (x0, v or eps, as the scheduler is configured) at timesteps ``t``;
        with ``return_prediction``, ``(mse, prediction)``."""
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        text = self.text[batch["caption"].to(self.text.device)].to(x0.device)
        inputs = [noisy, batch["lr"]] + ([batch["spatial"]] if batch.get("spatial") is not None else [])
        pred = model(torch.cat(inputs, dim=1), t, text, batch["tokens"], batch["keep"])
        kind = self.noise_scheduler.config.prediction_type
        if kind == "sample":
            target = x0
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(x0, noise, t)
        else:
            target = noise
        mse = F.mse_loss(pred.float(), target.float())
        return (mse, pred) if return_prediction else mse

    # -- output -------------------------------------------------------------------------------

    def save(self, model: SRDenoiser, out: Path, rng: np.random.Generator) -> None:
        """A complete pipeline folder without text encoder/tokenizer (the lite loader passes MiniLM in)."""
        pipe = self.pipe
        parts = dict(
            vae=pipe.vae,
            unet=model.unet,
            scheduler=pipe.scheduler,
            vqmodel=pipe.vqmodel,
            condition_embedding=model.condition_embedding,
            connector=model.connector,
        )
        dtype = torch.float16 if self.fp16_weights else torch.float32
        saved = MMSRPipeline(
            **{k: v.to("cpu", dtype) if hasattr(v, "to") else v for k, v in parts.items()},
            text_encoder=None,
            tokenizer=None,
            stage1=pipe.config.stage1,
            residual=pipe.config.residual,
            trained_modalities=pipe.config.trained_modalities,
            spatial_modalities=pipe.config.spatial_modalities,
        )
        saved.save_pretrained(out / "pipeline", safe_serialization=True)
        for part in parts.values():
            if hasattr(part, "to"):
                part.to(torch.float32)
        record = {
            "text_only": self.text_only,
            "trained_modalities": pipe.config.trained_modalities,
            "spatial_modalities": pipe.config.spatial_modalities,
            "hr_edge_fraction": self.hr_edge_fraction,
            "fft_weight": self.fft_weight,
            "adv_weight": self.adv_weight,
        }
        (out / "pipeline" / "training.json").write_text(json.dumps(record, indent=2))


def held_out(n_photos: int, val_photos: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(val_ids, train_ids)``: the photo indices ``--val-photos`` holds out (drawn with the seed) and the rest."""
    ids = np.random.default_rng(seed).permutation(n_photos)
    if not 0 <= val_photos < n_photos:
        raise ValueError(f"--val-photos must lie in [0, {n_photos - 1}], got {val_photos}")
    return np.sort(ids[:val_photos]), np.sort(ids[val_photos:])


def link_shared(twin: Path, base: Path, parts: tuple[str, ...] = ("vae", "vqmodel")) -> None:
    """Make ``twin`` take ``parts`` from ``base`` (``shared.json``), dropping its own copies."""
    for part in parts:
        shutil.rmtree(twin / part, ignore_errors=True)
    rel = Path("..") / base.name if base.parent.resolve() == twin.parent.resolve() else base.resolve()
    (twin / "shared.json").write_text(json.dumps({part: str(rel) for part in parts}, indent=2))
