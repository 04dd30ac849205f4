"""The engine: one loaded pipeline, its extractors and caches, behind ``upscale(image, settings)``.

The CLI, the app and the lab all call this; it knows nothing about any UI. Extractor results and
modality tokens are cached per image, so editing a caption, a switch, a temperature or the guidance
re-runs only the diffusion.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from .conditioning import MODALITIES
from .constants import SCALE
from .errors import is_out_of_memory, release_memory, resource_error
from .imageio import check_map_shape, check_size, pil_to_tensor, tensor_to_pil
from .modalities import EXTRACTORS, ExtractorCache, ModalityResult, extract_all, spatial_map
from .pipeline import MMSRPipeline
from .presets import get_preset, load_pipeline
from .settings import UpscaleSettings

MAX_LR_SIDE = 512


def check_device(text: str) -> torch.device:
    """``text`` as a torch device this machine has; a ``ValueError`` that says which ones it has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{text!r}: no CUDA GPU is visible here; use cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{text!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{text!r}: MPS is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{text!r}: not supported; use cpu, cuda, cuda:N or mps")
    return device


def pick_device(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """``cuda`` in bf16 (fp16 where bf16 is missing) when present, else CPU in fp32; a device this
    machine lacks is a ``ValueError`` (:func:`check_device`)."""
    device = check_device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        return device, torch.float32
    return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class UpscaleResult:
    image: Image.Image
    lr: Image.Image
    caption: str
    settings: UpscaleSettings
    modalities: dict[str, ModalityResult]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def sources(self) -> dict[str, str]:
        """Where each modality came from, or why it is ``m_0``."""
        return {k: (r.source if r.available else f"m_0 ({r.reason})") for k, r in self.modalities.items()}


def image_hash(image: Image.Image) -> str:
    return hashlib.sha1(np.asarray(image).tobytes() + repr(image.size).encode()).hexdigest()


class Engine:
    """A pipeline plus extractors plus caches; ``upscale`` is the one entry point.

    ``extractors``: ``{name: extractor}`` for the caption and every modality (default: the registered
    ones); the bench passes random-weight stand-ins here. ``latent_tile``: the pipeline's latent
    tiling (``None`` = automatic, ``0`` = never; see :func:`mmsr.tiling.resolve_tile`), a memory
    knob of the machine rather than a run setting.
    """

    def __init__(
        self,
        pipeline: MMSRPipeline,
        preset: str,
        extractors: dict | None = None,
        cache_entries: int = 64,
        latent_tile: int | None = None,
    ):
        self.pipeline = pipeline
        self.preset = get_preset(preset)
        self.latent_tile = latent_tile
        self.num_samples = self.preset.default_samples  # samples averaged per output (see MMSRPipeline)
        device = pipeline.device
        self.extractors = (
            extractors if extractors is not None else {k: cls(device=device) for k, cls in EXTRACTORS.items()}
        )
        self.extractor_cache = ExtractorCache(max_entries=cache_entries)
        self._tokens: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._stage1: OrderedDict[str, Image.Image] = OrderedDict()
        self._cache_entries = cache_entries

    @classmethod
    def load(cls, preset: str = "lite", checkpoint=None, device: str | None = None, **extractor_options) -> Engine:
        device, dtype = pick_device(device)
        pipe = load_pipeline(preset, checkpoint=checkpoint, device=device, dtype=dtype)
        extractors = {k: c(device=device, **extractor_options.get(k, {})) for k, c in EXTRACTORS.items()}
        return cls(pipe, preset, extractors)

    # -- context ----------------------------------------------------------------------------------

    def caption(self, image: Image.Image) -> ModalityResult:
        return extract_all(
            image,
            extractors={"caption": self.extractors["caption"]},
            enabled={"caption": True},
            user_maps={},
            cache=self.extractor_cache,
            flat_guard=False,
        )["caption"]

    def extract(
        self,
        image: Image.Image,
        enabled: dict[str, bool],
        user_maps: dict | None = None,
        upscaled: bool = False,
        flat_guard: bool = True,
    ) -> dict[str, ModalityResult]:
        """Spatial maps for ``image`` (cached); disabled or failed modalities come back absent.

        A user's map must have the aspect ratio of ``image`` (``ImageError`` otherwise): a stretched
        map would condition the wrong pixels.
        """
        for name, user_map in (user_maps or {}).items():
            check_map_shape(user_map, image, name)
        spatial = {k: self.extractors[k] for k in MODALITIES}
        trained = self.trained_modalities
        results = extract_all(
            image,
            extractors=spatial,
            enabled={k: enabled.get(k, True) and k in trained for k in MODALITIES},
            user_maps=user_maps or {},
            cache=self.extractor_cache,
            flat_guard=flat_guard,
            upscaled=upscaled,
        )
        for k in MODALITIES:
            if enabled.get(k, True) and k not in trained:
                # A map the model never learned could push it off its training distribution.
                results[k] = ModalityResult.absent(
                    k, f"this {self.preset.name} checkpoint was not trained with {k} maps"
                )
        return results

    @property
    def trained_modalities(self) -> tuple[str, ...]:
        return tuple(self.pipeline.config.trained_modalities)

    def stage1(self, lr: Image.Image) -> Image.Image | None:
        """The pipeline's frozen stage-1 restoration of ``lr`` (cached per image); ``None`` without one.

        The same image is the Real-ESRGAN baseline column: it is computed once per input.
        """
        if self.pipeline.config.stage1 is None:
            return None
        key = image_hash(lr)
        if key not in self._stage1:
            self._stage1[key] = tensor_to_pil(self.pipeline.restore(pil_to_tensor(lr).to(self.pipeline.device)))
            while len(self._stage1) > self._cache_entries:
                self._stage1.popitem(last=False)
        self._stage1.move_to_end(key)
        return self._stage1[key]

    def remember_stage1(self, lr: Image.Image, image: Image.Image) -> None:
        """Seed the stage-1 cache with a stage-1 image made earlier (e.g. a saved Real-ESRGAN PNG of ``lr``)."""
        self._stage1[image_hash(lr)] = image.convert("RGB")

    def baseline_from_stage1(self, name: str, lr: Image.Image) -> Image.Image | None:
        """The stage-1 image when baseline ``name`` is what stage 1 runs (e.g. ``realesrgan``), else ``None``."""
        from .pipeline import STAGE1_MODELS

        if STAGE1_MODELS.get(self.pipeline.config.stage1) != name:
            return None
        return self.stage1(lr)

    def tokens(self, results: dict[str, ModalityResult]) -> list[torch.Tensor | None]:
        """Modality tokens in ``MODALITIES`` order (``None`` = ``m_0``), cached per map."""
        out = []
        for name in MODALITIES:
            r = results.get(name)
            if r is None or not r.available:
                out.append(None)
                continue
            key = f"{name}:{image_hash(r.map)}"
            if key not in self._tokens:
                maps = {name: pil_to_tensor(r.map.convert("RGB"))}
                self._tokens[key] = self.pipeline.encode_modalities(maps)[MODALITIES.index(name)]
                while len(self._tokens) > self._cache_entries:
                    self._tokens.popitem(last=False)
            self._tokens.move_to_end(key)
            out.append(self._tokens[key])
        return out

    def spatial_maps(self, results: dict[str, ModalityResult], lr_size: tuple[int, int]) -> dict:
        """The maps a pipeline with ``spatial_modalities`` lays on its latent grid, drawn at the output
        size from each result's raw map (``None`` = ``m_0``)."""
        size = (lr_size[0] * SCALE, lr_size[1] * SCALE)
        out = {}
        for name in self.pipeline.config.get("spatial_modalities", ()):
            r = results.get(name)
            m = None if r is None else spatial_map(r, size)
            out[name] = None if m is None else pil_to_tensor(m)
        return out

    # -- super-resolution -------------------------------------------------------------------------

    def num_steps(self, settings: UpscaleSettings) -> int:
        """The denoising steps a run under ``settings`` takes: its own, else the preset's."""
        return settings.steps or self.preset.default_steps

    def guidance(self, settings: UpscaleSettings) -> float:
        """The guidance weight w a run under ``settings`` uses: its own, else the preset's."""
        return self.preset.default_guidance if settings.guidance is None else settings.guidance

    def residual_scale(self, settings: UpscaleSettings) -> float:
        """The residual scale a run under ``settings`` uses: its own, else the checkpoint's (1 without a stage 1)."""
        if settings.residual_scale is not None:
            return settings.residual_scale
        return self.pipeline.config.residual_scale

    def upscale(
        self,
        lr: Image.Image,
        settings: UpscaleSettings,
        user_maps: dict | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> UpscaleResult:
        """Super-resolve ``lr`` x4 with MMSR under ``settings`` (see :class:`UpscaleSettings`).

        Running out of memory raises :class:`mmsr.errors.ResourceError` (with what to change) after
        the memory is released, so the engine keeps serving. The result's settings hold the guidance
        weight and residual scale the run used (the preset's and the checkpoint's when ``settings`` leave
        them unset), so a record replays it.
        """
        if settings.guidance is None or settings.residual_scale is None:  # so a record replays the run
            settings = replace(settings, guidance=self.guidance(settings), residual_scale=self.residual_scale(settings))
        caption_notes = list(settings.notes)  # e.g. the cut of an overlong caption, made when settings were built
        check_size(lr, MAX_LR_SIDE)
        try:
            return self._upscale(lr, settings, user_maps, callback, caption_notes)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            error = resource_error(e, *lr.size, self.num_steps(settings))
        # Outside the ``except``: the traceback that pins the failed run's tensors is gone by now.
        release_memory()
        raise error

    def _upscale(self, lr, settings, user_maps, callback, notes: list[str]) -> UpscaleResult:
        timings: dict[str, float] = {}
        caption = settings.caption
        if not caption and settings.auto_caption:
            c = self.caption(lr)
            timings["caption"] = c.seconds
            caption = c.text or ""
            if not c.available:
                notes.append(f"no caption: {c.reason}")
        if settings.refine:
            first = self._run(lr, caption, settings, {}, callback, timings, prefix="refine_")
            results = self.extract(first, settings.modalities, user_maps, upscaled=True, flat_guard=False)
        else:
            results = self.extract(lr, settings.modalities, user_maps, flat_guard=settings.flat_guard)
        for name, r in results.items():
            timings[f"extract_{name}"] = 0.0 if r.extras.get("cached") else r.seconds  # a cache hit costs nothing
            if settings.modalities.get(name, True) and not r.available:
                notes.append(f"{name}: using m_0 ({r.reason})")
        image = self._run(lr, caption, settings, results, callback, timings, notes=notes)
        return UpscaleResult(image, lr, caption, settings, results, timings, notes)

    def _run(self, lr, caption, settings, results, callback, timings, prefix="", notes=None) -> Image.Image:
        start = time.perf_counter()
        tokens = self.tokens(results)
        timings[f"{prefix}tokenizer"] = time.perf_counter() - start
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        start = time.perf_counter()
        stage1 = self.stage1(lr)
        if stage1 is not None:
            timings[f"{prefix}stage1"] = time.perf_counter() - start
            stage1 = pil_to_tensor(stage1)
        out = self.pipeline(
            pil_to_tensor(lr),
            stage1=stage1,
            prompt=caption,
            modality_tokens=tokens,
            negative_prompt=settings.negative_prompt,
            cfg_mode=settings.cfg_mode,
            guidance_scale=self.guidance(settings),
            num_inference_steps=self.num_steps(settings),
            strength=settings.strength or self.preset.default_strength,
            temperatures=settings.temperatures,
            generator=generator,
            callback=callback,
            latent_tile=self.latent_tile,
            num_samples=self.num_samples,
            spatial_maps=self.spatial_maps(results, lr.size),
            residual_scale=self.residual_scale(settings),
        )
        timings.update({f"{prefix}{k}": v for k, v in out.timings.items() if k != "tokenizer"})
        if notes is not None:
            notes.extend(out.warnings)
        return tensor_to_pil(out.images)

    def text_only(self, lr: Image.Image, settings: UpscaleSettings, callback=None) -> UpscaleResult:
        """The paper's text-guided ablation: the same model with every spatial modality = ``m_0``."""
        off = replace(settings, modalities=dict.fromkeys(MODALITIES, False), refine=False)
        return self.upscale(lr, off, callback=callback)
