"""MMSR: multimodal diffusion super-resolution (Mei et al., CVPR 2025).

Names are imported lazily so that ``import mmsr.degradation`` (or the CLI's ``--help``) does not pay
for diffusers and transformers.
"""

import importlib

_EXPORTS = {
    "MODALITIES": "conditioning",
    "ConditionEmbedding": "conditioning",
    "MMLConnector": "connector",
    "MMSRPipeline": "pipeline",
    "MMSRPipelineOutput": "pipeline",
    "ModalityTokenizer": "tokenizer",
    "PRESETS": "presets",
    "PresetUnavailable": "presets",
    "build_components": "presets",
    "load_pipeline": "presets",
    "Engine": "engine",
    "UpscaleSettings": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmsr' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
