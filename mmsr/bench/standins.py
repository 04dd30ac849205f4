"""The bench's extractors: real models where their weights are on disk, else random-weight stand-ins.

Timing does not depend on weight values, so an extractor whose weights are missing is timed as a
model of the same architecture built from its transformers config with random weights.
"""

from __future__ import annotations

from ..modalities import BackendUnavailable, CaptionExtractor, DepthExtractor, EdgeExtractor, SegmentationExtractor


def depth_stand_in(tiny: bool):
    """Depth Anything V2 (small, or toy for tiny-random) architecture with random weights, and its processor."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    width, layers, heads, side = (32, 4, 2, 56) if tiny else (384, 12, 6, 518)
    backbone = Dinov2Config(
        hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width,
        patch_size=14, image_size=side, out_indices=[layers // 4 * (i + 1) for i in range(4)],
        reshape_hidden_states=False,
    )  # fmt: skip
    necks = [8, 16, 32, 32] if tiny else [48, 96, 192, 384]
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=width, neck_hidden_sizes=necks,
        fusion_hidden_size=16 if tiny else 64, head_hidden_size=8 if tiny else 32,
    )  # fmt: skip
    processor = DPTImageProcessor(
        size={"height": side, "width": side}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3
    )
    return DepthAnythingForDepthEstimation(config).eval(), processor


def seg_stand_in(tiny: bool):
    """Mask2Former Swin-S (COCO panoptic, 133 classes; toy for tiny-random) with random weights, and a processor.

    The processor resizes the short side to 384 (assumed from the hub checkpoint; it drives the cost).
    """
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    from ..modalities import COCO_TO_VOC

    names = [*COCO_TO_VOC, *(f"class {i}" for i in range(len(COCO_TO_VOC), 133))]
    labels = dict(enumerate(names))
    options = {}
    if tiny:
        stages = [f"stage{i}" for i in range(1, 5)]
        backbone = SwinConfig(embed_dim=16, depths=[1] * 4, num_heads=[1] * 4, out_features=stages)
        options = dict(
            backbone_config=backbone, hidden_dim=32, num_queries=8, decoder_layers=2, encoder_layers=1,
            feature_size=32, mask_feature_size=32, dim_feedforward=64, num_attention_heads=2,
        )  # fmt: skip
    config = Mask2FormerConfig(id2label=labels, label2id={v: k for k, v in labels.items()}, **options)
    short = 64 if tiny else 384
    processor = Mask2FormerImageProcessor(size={"shortest_edge": short, "longest_edge": 1333})
    return Mask2FormerForUniversalSegmentation(config).eval(), processor


# name, extractor class, stand-in builder, architecture
STAND_INS = (
    ("depth", DepthExtractor, depth_stand_in, "Depth Anything V2 small"),
    ("seg", SegmentationExtractor, seg_stand_in, "Mask2Former Swin-S"),
)


def caption_extractor(tiny: bool, device) -> tuple[CaptionExtractor | None, dict]:
    """The captioner when its model is on disk (never for tiny-random), with its facts; else ``None`` and why."""
    caption = CaptionExtractor(device=device, use_gemini=False)
    try:
        if tiny:
            raise BackendUnavailable("tiny-random: no caption model")
        caption.model.get()
    except BackendUnavailable as e:
        return None, {"weights": None, "unavailable": str(e)}
    return caption, {"weights": "real", "model": caption.model_id}


def modality_extractor(cls, stand_in, arch: str, tiny: bool, device) -> tuple[object, dict]:
    """The real extractor when its weights load (never for tiny-random), else one over a random-weight model."""
    real = cls(device=device)
    try:
        if tiny:
            raise BackendUnavailable("tiny-random: toy architecture")
        real.model.get()
    except BackendUnavailable as e:
        model, processor = stand_in(tiny)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        arch = f"toy {arch}" if tiny else arch
        info = {"weights": "random", "model": f"{arch} architecture, {params:.1f}M", "why": str(e)}
        return cls(device=device, model=model, processor=processor), info
    return real, {"weights": "real", "model": real.model_id}


def build_extractors(preset: str, device) -> tuple[dict, dict]:
    """``({name: extractor}, {name: facts})`` for the caption and every modality; no captioner, no ``caption`` key."""
    tiny = preset == "tiny-random"
    extractors, info = {}, {}
    caption, info["caption"] = caption_extractor(tiny, device)
    if caption is not None:
        extractors["caption"] = caption
    for name, cls, stand_in, arch in STAND_INS:
        extractors[name], info[name] = modality_extractor(cls, stand_in, arch, tiny, device)
    extractors["edges"], info["edges"] = EdgeExtractor(device=device), {"weights": "real", "model": "OpenCV Canny"}
    return extractors, info
