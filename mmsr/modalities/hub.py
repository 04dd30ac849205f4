"""Can a hub model be used *now*, without waiting? And load it once, lazily.

Offline (``HF_HUB_OFFLINE=1``) or with the hub unreachable, a hub backend must report absent at
once instead of hanging on download retries. Reachability is one TCP connect to the hub
(``HF_ENDPOINT``, default huggingface.co:443) with a 1.5 s timeout, checked once per process. A
model already in the local Hugging Face cache still loads, with ``local_files_only=True``.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlparse

from .base import BackendUnavailable, ModalityExtractor

CONNECT_TIMEOUT_S = 1.5
_TRUE = {"1", "true", "yes", "on"}


def env_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: the project's switch for "no network at all"."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


@functools.cache
def _probe(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"the hub ({host}) is unreachable: {type(e).__name__}"
    return None


def offline_reason() -> str | None:
    """``None`` when the hub can be used, else a short reason (env checked each call, socket once)."""
    if env_offline():
        return "offline (HF_HUB_OFFLINE=1)"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return _probe(
        url.hostname or "huggingface.co",
        url.port or (80 if url.scheme == "http" else 443),
    )


def is_cached(model_id: str) -> bool:
    """The model's ``config.json`` is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except ValueError:  # not a valid repo id (HFValidationError)
        return False


def pretrained_kwargs(model_id: str, what: str) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``model_id``, or ``BackendUnavailable`` at once.

    A local folder always loads; a hub id loads normally online, from the cache only when offline.
    """
    if os.path.isdir(model_id):
        return {}
    reason = offline_reason()
    if reason is None:
        return {}
    if not is_cached(model_id):
        raise BackendUnavailable(f"{what}: {reason} and {model_id} is not in the local Hugging Face cache")
    return {"local_files_only": True}


class LazyModel:
    """A ``(model, processor)`` pair built on first use, then reused; a load failure is remembered.

    Args:
        load: ``load(model, processor)`` loads what is ``None``, puts the model on its device and
            returns the pair; may raise ``BackendUnavailable`` (offline) or anything else.
        what: the backend's name for messages.
        model, processor: injected objects (tests, custom weights), passed on to ``load``.
    """

    def __init__(
        self,
        load: Callable[[Any, Any], tuple[Any, Any]],
        what: str,
        model: Any = None,
        processor: Any = None,
    ):
        self._load, self.what = load, what
        self._given = (model, processor)
        self._pair: tuple[Any, Any] | None = None
        self._error: str | None = None
        self._lock = threading.Lock()  # two app requests must not load the weights twice

    @property
    def injected(self) -> bool:
        return self._given != (None, None)

    def get(self) -> tuple[Any, Any]:
        """The loaded pair; raises ``BackendUnavailable`` with the (remembered) reason otherwise."""
        with self._lock:
            return self._get()

    def _get(self) -> tuple[Any, Any]:
        if self._pair is None:
            if self._error is not None:
                raise BackendUnavailable(self._error)
            try:
                self._pair = self._load(*self._given)
            except BackendUnavailable as e:
                self._error = str(e)
                raise
            except Exception as e:  # an unloadable model means m_0, not a crash
                self._error = f"{self.what}: could not load: {type(e).__name__}: {e}"
                raise BackendUnavailable(self._error) from e
        return self._pair


class HubExtractor(ModalityExtractor):
    """An extractor whose model backend is a ``transformers`` model + processor from the hub.

    Subclasses name the classes (``model_class``, ``processor_class``) and the default checkpoint
    (``default_model_id``) and call ``self.model.get()``.

    Args:
        model_id: hub id or local folder of the checkpoint (``None``: ``default_model_id``).
        model, processor: an already built model and processor (tests, custom weights); the hub is
            consulted only for what is not given.
    """

    model_class: ClassVar[str] = ""
    processor_class: ClassVar[str] = "AutoImageProcessor"
    default_model_id: ClassVar[str] = ""
    what: ClassVar[str] = ""

    def __init__(
        self,
        device: Any = "cpu",
        dtype: Any = None,
        model_id: str | None = None,
        model: Any = None,
        processor: Any = None,
    ):
        super().__init__(device, dtype)
        self.model_id = model_id or self.default_model_id
        self.model = LazyModel(self._load, self.what, model, processor)

    def settings(self) -> dict[str, Any]:
        model = f"injected:{id(self.model)}" if self.model.injected else self.model_id
        return {**super().settings(), "model": model}

    def _load(self, model: Any, processor: Any) -> tuple[Any, Any]:
        """Load what is missing; move the model to ``device``/``dtype`` (``None``: float32), eval mode."""
        kwargs = pretrained_kwargs(self.model_id, self.what) if model is None or processor is None else {}
        import torch
        import transformers

        if processor is None:
            processor = getattr(transformers, self.processor_class).from_pretrained(self.model_id, **kwargs)
        if model is None:
            model = getattr(transformers, self.model_class).from_pretrained(self.model_id, **kwargs)
        return model.to(device=self.device, dtype=self.dtype or torch.float32).eval(), processor
