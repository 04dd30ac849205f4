"""Stages ``vae`` and ``vq``: the lite preset's own f8 autoencoder and f16 modality tokenizer.

No pretrained perceptual network exists offline, so the VAE learns from an L1 pixel loss, an FFT
(frequency) loss that keeps high frequencies, a small KL term and, after a warm-up, a hinge
PatchGAN loss. The VQ tokenizer learns from L1 + the quantizer's codebook/commitment loss on maps
rendered from the training photos (edges, VOC labels) plus synthetic smooth depth-like maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageBank, edge_map, pil_batch, random_crops, seg_map, synthetic_depth, to_tensor


def fft_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the 2-D spectra (orthonormal FFT): penalises lost high frequencies."""
    return (torch.fft.rfft2(a.float(), norm="ortho") - torch.fft.rfft2(b.float(), norm="ortho")).abs().mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): ``(B, in_channels, H, W)`` in [-1, 1] -> ``(B, 1, H/8, W/8)`` real/fake logits
    (``in_channels`` 6: an image and the condition it should match, as pix2pix's conditional D)."""

    def __init__(self, channels: int = 32, layers: int = 3, in_channels: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            blocks += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(8, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        blocks += [nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(8, c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


class VAEStage:
    """Train the preset's ``AutoencoderKL`` on random HR crops; saves ``OUT/vae``.

    After training, ``scaling_factor`` is set to ``1 / std`` of the latents of training crops, so
    the diffusion model sees unit-variance latents.
    """

    name = "vae"
    ema = False

    def __init__(
        self,
        components: dict,
        bank: ImageBank,
        crop: int,
        kl_weight: float = 1e-6,
        fft_weight: float = 0.5,
        adv_weight: float = 0.02,
        adv_start: int = 300,
    ):
        self.model = VAEWrapper(components["vae"].train())
        self.discriminator = PatchDiscriminator()
        self.bank, self.crop = bank, crop
        self.kl_weight, self.fft_weight, self.adv_weight, self.adv_start = kl_weight, fft_weight, adv_weight, adv_start

    def next_batch(self, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
        return to_tensor([im for im, _ in random_crops(self.bank, batch_size, self.crop, rng)]) * 2 - 1

    def loss(self, model, x: torch.Tensor, step: int):
        posterior = model(x, return_posterior=True)
        rec = posterior["sample"]
        l1 = (rec - x).abs().mean()
        freq = fft_loss(rec, x)
        kl = posterior["kl"]
        loss = l1 + self.fft_weight * freq + self.kl_weight * kl
        logs = {"l1": l1.item(), "fft": freq.item(), "kl": kl.item()}
        if step >= self.adv_start:
            self.discriminator.requires_grad_(False)
            g = -self.discriminator(rec).mean()
            self.discriminator.requires_grad_(True)
            loss = loss + self.adv_weight * g
            logs["g_adv"] = g.item()
        return loss, logs, (x, rec.detach())

    def disc_loss(self, disc, extra, step: int):
        if step < self.adv_start:
            return None, {}
        real, fake = extra
        d = hinge_d_loss(disc(real), disc(fake))
        return d, {"d_loss": d.item()}

    @torch.no_grad()
    def finalize(self, vae, bank_rng: np.random.Generator, batches: int = 8, batch_size: int = 16) -> None:
        vae.eval()
        latents = [vae.encode(self.next_batch(batch_size, bank_rng)).latent_dist.mode() for _ in range(batches)]
        std = torch.cat(latents).float().std().item()
        vae.register_to_config(scaling_factor=1.0 / std)

    def save(self, model, out: Path, rng: np.random.Generator) -> None:
        vae = model.vae
        self.finalize(vae, rng)
        vae.save_pretrained(out / "vae", safe_serialization=True)


class VAEWrapper(nn.Module):
    """Forward = encode, decode, with the KL per sample: one call DDP can wrap."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, return_posterior: bool = True) -> dict:
        posterior = self.vae.encode(x).latent_dist
        # The pipeline only ever uses the posterior mode; decoding the mode (not a sample) trains
        # several times faster on a CPU budget, and the KL term still keeps the latents small.
        rec = self.vae.decode(posterior.mode()).sample
        return {"sample": rec, "kl": posterior.kl().mean()}


class VQWrapper(nn.Module):
    """Forward = encode, quantize, decode; also returns the encoder outputs and code indices."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq

    def forward(self, x: torch.Tensor):
        h = self.vq.encode(x).latents
        quant, commit, (_, _, idx) = self.vq.quantize(h)
        rec = self.vq.decoder(self.vq.post_quant_conv(quant))
        return rec, commit, h.detach(), idx


@torch.no_grad()
def restart_dead_codes(codebook: torch.Tensor, usage: torch.Tensor, h: torch.Tensor, rng: np.random.Generator) -> int:
    """Move codes unused since the last restart onto random encoder outputs (avoids codebook collapse)."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    vectors = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    pick = torch.from_numpy(rng.integers(0, len(vectors), size=len(dead))).to(vectors.device)
    codebook[dead] = vectors[pick] + 0.01 * torch.randn_like(vectors[pick])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(codebook, src=0)
    usage.zero_()
    return len(dead)


class VQStage:
    """Train the preset's ``VQModel`` on modality maps; saves ``OUT/vqmodel``.

    Codes unused for ``restart_every`` steps are restarted on encoder outputs of the current batch.
    """

    name = "vq"
    ema = False
    discriminator = None

    def __init__(
        self,
        components: dict,
        bank: ImageBank,
        crop: int,
        depth_fraction: float = 0.2,
        map_crop: int = 128,
        restart_every: int = 20,
    ):
        vq = components["vqmodel"].requires_grad_(True).train()
        self.model = VQWrapper(vq)
        self.bank, self.crop, self.depth_fraction, self.map_crop = bank, crop, depth_fraction, map_crop
        self.restart_every = restart_every
        self.usage = torch.zeros(vq.config.num_vq_embeddings)

    def next_batch(self, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
        maps = []
        for image, seg in random_crops(self.bank, batch_size, self.crop, rng):
            u = rng.random()
            if u < self.depth_fraction:
                maps.append(synthetic_depth(rng))
            elif seg is not None and u < (1 + self.depth_fraction) / 2:
                maps.append(seg_map(seg))
            else:
                maps.append(edge_map(image))
        # The VQ is convolutional: random map_crop windows of the 256 px maps train it 4x cheaper.
        x = pil_batch(maps) * 2 - 1
        y, x0 = (int(v) for v in rng.integers(0, x.shape[-1] - self.map_crop + 1, size=2))
        return x[..., y : y + self.map_crop, x0 : x0 + self.map_crop]

    def loss(self, model, x: torch.Tensor, step: int):
        rec, commit, h, idx = model(x)
        l1 = (rec - x).abs().mean()
        commit = commit.mean()
        self.usage = self.usage.to(idx.device)
        self.usage += torch.bincount(idx.flatten(), minlength=len(self.usage))
        logs = {"l1": l1.item(), "commit": commit.item(), "codes_used": int((self.usage > 0).sum())}
        if step % self.restart_every == self.restart_every - 1:
            codebook = _unwrap(model).vq.quantize.embedding.weight.data
            logs["restarted"] = restart_dead_codes(codebook, self.usage, h, np.random.default_rng(step))
        return l1 + commit, logs, None

    def save(self, model, out: Path, rng: np.random.Generator) -> None:
        model.vq.requires_grad_(False).eval().save_pretrained(out / "vqmodel", safe_serialization=True)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
