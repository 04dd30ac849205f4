"""MMSR: multimodal diffusion super-resolution (Mei et al., CVPR 2025)."""

from .conditioning import MODALITIES, ConditionEmbedding
from .connector import MMLConnector
from .pipeline import MMSRPipeline, MMSRPipelineOutput
from .presets import PRESETS, PresetUnavailable, build_components, load_pipeline
from .tokenizer import ModalityTokenizer

__all__ = [
    "MODALITIES",
    "PRESETS",
    "ConditionEmbedding",
    "MMLConnector",
    "MMSRPipeline",
    "MMSRPipelineOutput",
    "ModalityTokenizer",
    "PresetUnavailable",
    "build_components",
    "load_pipeline",
]
