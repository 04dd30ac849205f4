"""Modality extractors: caption, depth, segmentation, edges.

Each extractor is built as ``Extractor(device="cpu", dtype=None, **backend_options)`` and called as
``extractor(image, user_map=None, upscaled=False) -> ModalityResult``; models load lazily on first
use. ``extract_all`` adds the switches, the flat-image guard and the cache.
"""

from .base import (
    MAP_SIZE,
    SPATIAL_MODALITIES,
    BackendUnavailable,
    ModalityExtractor,
    ModalityResult,
)
from .cache import ExtractorCache, cache_key, content_digest
from .caption import CAPTION_PROMPT, CaptionExtractor, clean_caption
from .depth import DepthExtractor, normalise_depth, render_depth
from .edges import EdgeExtractor, canny_edges, render_edges
from .extract import extract_all, spatial_map
from .flat import flatness_stats, is_flat
from .palette import (
    COCO_TO_VOC,
    LABEL_SPACES,
    VOC_CLASSES,
    LabelSpace,
    label_lookup,
    render_label_map,
    voc_colormap,
)
from .segmentation import SegmentationExtractor

EXTRACTORS: dict[str, type[ModalityExtractor]] = {
    "caption": CaptionExtractor,
    "depth": DepthExtractor,
    "seg": SegmentationExtractor,
    "edges": EdgeExtractor,
}

__all__ = [
    "CAPTION_PROMPT",
    "COCO_TO_VOC",
    "EXTRACTORS",
    "LABEL_SPACES",
    "MAP_SIZE",
    "SPATIAL_MODALITIES",
    "VOC_CLASSES",
    "BackendUnavailable",
    "CaptionExtractor",
    "DepthExtractor",
    "EdgeExtractor",
    "ExtractorCache",
    "LabelSpace",
    "ModalityExtractor",
    "ModalityResult",
    "SegmentationExtractor",
    "cache_key",
    "canny_edges",
    "clean_caption",
    "content_digest",
    "extract_all",
    "spatial_map",
    "flatness_stats",
    "is_flat",
    "label_lookup",
    "normalise_depth",
    "render_depth",
    "render_edges",
    "render_label_map",
    "voc_colormap",
]
