"""Stage ``unet``: the MMSR UNet + connector + ``m_0`` with the diffusion epsilon loss (paper sec. 3.4).

The frozen parts (VAE, VQ tokenizer, text encoder) run once, before training, over whole photos:

* HR latents of each photo and, for ``lr_variants`` LR versions of it (second-order degradation,
  the last one plain bicubic), ``pipeline.encode_lr(lr)``: the UNet's concatenated LR condition;
* VQ code indices of the edge and VOC-label maps of each photo, rendered at ``256 / crop`` map
  pixels per HR pixel, so an HR crop has exactly the 256x256 map and 16x16 tokens it would have on
  its own (at 128 px crops, token ``(i, j)`` lies over latent ``(i, j)``);
* text hidden states of every distinct caption (and of the empty caption).

A training crop is then a random 16x16 window of those grids: no encoder runs in the loop, which
is what makes training on two CPU cores possible. Modalities come from the HR photo; depth has no
offline source and is always ``m_0``.
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
from torch import nn

from ..conditioning import MODALITIES
from ..degradation import Degradation, bicubic_degrade
from ..modalities.edges import canny_edges
from ..modalities.palette import get_label_space
from ..pipeline import SCALE, MMSRPipeline
from .data import ImageBank, to_tensor

TOKENS = 16  # a 256 px map -> 16x16 tokens
SEG, EDGES = MODALITIES.index("seg"), MODALITIES.index("edges")


class SRDenoiser(nn.Module):
    """``condition_embedding`` + ``connector`` + ``unet`` as one module (one forward for DDP).

    ``forward(x, t, text, tokens, keep)``: ``x`` ``(B, 8, h, w)`` = cat(noisy latent, LR latent);
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
    hr: torch.Tensor  # (4, h, w)
    lr: torch.Tensor  # (V, 4, h, w)
    seg: torch.Tensor | None  # (h, w) code indices
    edges: torch.Tensor  # (h, w) code indices
    caption: int


def _crop8(image: np.ndarray, seg: np.ndarray | None, multiple: int):
    h, w = (s - s % multiple for s in image.shape[:2])
    return image[:h, :w], None if seg is None else seg[:h, :w]


def _up(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


@torch.no_grad()
def vq_indices(pipe: MMSRPipeline, rgb_map: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 map -> ``(H/16, W/16)`` code indices of the frozen VQ (as the tokenizer quantizes)."""
    vq = pipe.vqmodel
    x = to_tensor([rgb_map]).to(vq.device, vq.dtype) * 2 - 1
    h = vq.encode(x).latents
    _, _, (_, _, idx) = vq.quantize(h)
    return idx.reshape(h.shape[-2:]).to(torch.int16).cpu()


@torch.no_grad()
def encode_photo(
    pipe: MMSRPipeline, image: np.ndarray, seg, caption: int, lr_variants: int, gen, map_scale: int
) -> PhotoLatents:
    vae = pipe.vae
    hr = to_tensor([image]).to(vae.device)
    hr_latent = vae.encode(hr * 2 - 1).latent_dist.mode()[0] * vae.config.scaling_factor
    degrade = Degradation()
    lrs = [degrade(hr, gen) for _ in range(lr_variants - 1)] + [bicubic_degrade(hr, SCALE)]
    lr_latent = torch.cat([pipe.encode_lr(lr) for lr in lrs])
    edges = np.repeat(_up(canny_edges(image), map_scale)[..., None], 3, axis=2)
    seg_idx = None
    if seg is not None:
        palette = get_label_space("voc").palette
        ids = np.where(seg < len(palette), seg, 0)
        seg_idx = vq_indices(pipe, _up(palette[ids], map_scale))
    return PhotoLatents(hr_latent.cpu(), lr_latent.cpu(), seg_idx, vq_indices(pipe, edges), caption)


class UNetStage:
    """Train ``unet`` + ``connector`` + ``condition_embedding`` (``m_0``) on cached latents.

    ``text_only=True`` trains the text-only twin: every modality is ``m_0``, always.
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
    ):
        if crop % 8 or 256 % crop:
            raise ValueError(f"--crop must be a multiple of 8 that divides 256 (64, 128, 256), got {crop}")
        self.pipe = MMSRPipeline(**components)
        self.pipe.set_progress_bar_config(disable=True)
        for part in (self.pipe.vae, self.pipe.vqmodel, self.pipe.text_encoder):
            part.requires_grad_(False).eval()
        self.model = SRDenoiser(components["unet"], components["connector"], components["condition_embedding"]).train()
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self.bank, self.window = bank, crop // self.pipe.vae_scale_factor
        self.text_only, self.cache, self.lr_variants, self.seed = text_only, cache, lr_variants, seed
        self.ema, self.fp16_weights = ema, fp16_weights
        self.modality_dropout, self.caption_dropout = modality_dropout, caption_dropout
        self.photos: list[PhotoLatents] = []
        self.text: torch.Tensor | None = None

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
        self.empty_caption = data["captions"].index("")

    def build_cache(self) -> dict:
        captions = sorted(set(self.bank.captions) | {""})
        text = torch.cat([self.pipe.encode_prompt(captions[i : i + 32])[0].cpu() for i in range(0, len(captions), 32)])
        gen = torch.Generator().manual_seed(self.seed)
        map_scale = 256 // (self.window * self.pipe.vae_scale_factor)
        multiple = max(self.pipe.vae_scale_factor * 2, TOKENS * 2 // map_scale)
        photos = []
        for s in self.bank.samples:
            image, seg = _crop8(s.image, s.seg, multiple)
            caption = captions.index(s.caption)
            photos.append(encode_photo(self.pipe, image, seg, caption, self.lr_variants, gen, map_scale))
        return {"photos": photos, "text": text, "captions": captions}

    # -- batches ------------------------------------------------------------------------------

    def next_batch(self, batch_size: int, rng: np.random.Generator) -> dict:
        w = self.window
        r = TOKENS // w  # token rows per latent row
        hr, lr, tokens, captions, keep = [], [], [[], []], [], []
        codebook = self.pipe.vqmodel.quantize.embedding.weight
        for i in rng.integers(0, len(self.photos), size=batch_size):
            p = self.photos[i]
            h, wd = p.hr.shape[-2:]
            y, x = int(rng.integers(0, h - w + 1)), int(rng.integers(0, wd - w + 1))
            hr.append(p.hr[:, y : y + w, x : x + w])
            lr.append(p.lr[rng.integers(0, len(p.lr)), :, y : y + w, x : x + w])
            for j, idx in enumerate((p.seg, p.edges)):
                if idx is None:
                    window = torch.zeros(TOKENS, TOKENS, dtype=torch.long)
                else:
                    window = idx[y * r : y * r + TOKENS, x * r : x * r + TOKENS].long()
                tokens[j].append(window.flatten())
            drop = rng.random(3) < self.modality_dropout
            keep.append([False, p.seg is not None and not drop[SEG], not drop[EDGES]])
            captions.append(self.empty_caption if rng.random() < self.caption_dropout else p.caption)
        dim = self.model.condition_embedding.config.dim
        seg_tok, edge_tok = (F.pad(codebook[torch.stack(t)], (0, dim - codebook.shape[1])) for t in tokens)
        return {
            "hr": torch.stack(hr),
            "lr": torch.stack(lr),
            "tokens": [None, None, None] if self.text_only else [None, seg_tok, edge_tok],
            "keep": torch.tensor(keep) & torch.tensor(not self.text_only),
            "caption": torch.tensor(captions),
            "noise_seed": int(rng.integers(0, 2**31)),
        }

    def loss(self, model, batch: dict, step: int):
        device = batch["hr"].device
        hr = batch["hr"]
        gen = torch.Generator(device).manual_seed(batch["noise_seed"])
        noise = torch.randn(hr.shape, generator=gen, device=device, dtype=hr.dtype)
        t = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (hr.shape[0],), generator=gen, device=device
        )
        noisy = self.noise_scheduler.add_noise(hr, noise, t)
        text = self.text[batch["caption"].to(self.text.device)].to(device)
        eps = model(torch.cat([noisy, batch["lr"]], dim=1), t, text, batch["tokens"], batch["keep"])
        mse = F.mse_loss(eps.float(), noise.float())
        return mse, {"mse": mse.item()}, None

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
        )
        saved.save_pretrained(out / "pipeline", safe_serialization=True)
        for part in parts.values():
            if hasattr(part, "to"):
                part.to(torch.float32)
        (out / "pipeline" / "training.json").write_text(json.dumps({"text_only": self.text_only}, indent=2))


def link_shared(twin: Path, base: Path, parts: tuple[str, ...] = ("vae", "vqmodel")) -> None:
    """Make ``twin`` take ``parts`` from ``base`` (``shared.json``), dropping its own copies."""
    for part in parts:
        shutil.rmtree(twin / part, ignore_errors=True)
    rel = Path("..") / base.name if base.parent.resolve() == twin.parent.resolve() else base.resolve()
    (twin / "shared.json").write_text(json.dumps({part: str(rel) for part in parts}, indent=2))
