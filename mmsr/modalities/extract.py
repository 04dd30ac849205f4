"""Run several extractors on one image: switches, the flat-image guard and the cache in one place."""

from __future__ import annotations

from typing import Any

from PIL import Image

from .base import SPATIAL_MODALITIES, ModalityExtractor, ModalityResult, as_rgb
from .cache import ExtractorCache, cache_key
from .depth import render_depth
from .edges import render_edges
from .flat import is_flat
from .palette import render_label_map

SWITCHED_OFF = "switched off"


def _flat_result(name: str, stats: dict[str, float]) -> ModalityResult:
    reason = (
        f"flat input (mean gradient {stats['mean_gradient']:.2f}, "
        f"{stats['edge_fraction']:.1%} edge pixels): map unreliable, using m_0"
    )
    result = ModalityResult.absent(name, reason)
    result.extras["flatness"] = stats
    return result


def extract_all(
    image: Image.Image,
    *,
    extractors: dict[str, ModalityExtractor],
    enabled: dict[str, bool],
    user_maps: dict[str, Any] | None = None,
    cache: ExtractorCache | None = None,
    flat_guard: bool = True,
    upscaled: bool = False,
) -> dict[str, ModalityResult]:
    """One :class:`ModalityResult` per extractor, in the order of ``extractors``.

    Args:
        image: the LR (or, for zero-modal refinement, the SR result with ``upscaled=True``).
        extractors: name -> extractor, e.g. ``{k: cls() for k, cls in EXTRACTORS.items()}``.
        enabled: name -> switch; a missing name counts as on, an off one is absent ("switched off").
        user_maps: name -> the user's map (or caption text), tried before the model.
        cache: results are looked up and stored here, so only changed inputs re-run.
        flat_guard: spatial maps of a flat image become absent (``m_0``); a user's map still wins.
        upscaled: passed on to the extractors (no extra bicubic x4 for edges).
    """
    image = as_rgb(image)
    user_maps = user_maps or {}
    flatness: tuple[bool, dict[str, float]] | None = None
    results = {}
    for name, extractor in extractors.items():
        user_map = user_maps.get(name)
        if not enabled.get(name, True):
            results[name] = ModalityResult.absent(name, SWITCHED_OFF)
            continue
        if flat_guard and name in SPATIAL_MODALITIES and user_map is None:
            flatness = flatness or is_flat(image)
            if flatness[0]:
                results[name] = _flat_result(name, flatness[1])
                continue
        results[name] = _run(extractor, image, user_map, upscaled, cache)
    return results


def _run(
    extractor: ModalityExtractor,
    image: Image.Image,
    user_map: Any,
    upscaled: bool,
    cache: ExtractorCache | None,
) -> ModalityResult:
    def compute() -> ModalityResult:
        return extractor(image, user_map=user_map, upscaled=upscaled)

    if cache is None:
        return compute()
    key = cache_key(extractor.name, extractor.settings(), image, user_map, upscaled)
    return cache.get_or_compute(key, compute)


def spatial_map(result: ModalityResult, size: tuple[int, int]) -> Image.Image | None:
    """``result``'s map drawn at ``size`` ``(width, height)``, from its raw output where it has one
    (the tokenizer's :attr:`ModalityResult.map` is a 256 px square; a model that reads maps on its
    latent grid needs them at the output size). ``None`` when the modality is absent."""
    if not result.available or result.map is None:
        return None
    if result.raw is not None:
        if result.name == "edges":
            return render_edges(result.raw, size)
        if result.name == "seg":
            return render_label_map(result.raw, result.extras.get("label_space", "voc"), size)
        if result.name == "depth":
            return render_depth(result.raw, size)
    return result.map.convert("RGB").resize(size, Image.Resampling.NEAREST)
