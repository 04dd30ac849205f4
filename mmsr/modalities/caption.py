"""Captions: a hub vision-language model driven by the paper's in-context captioning prompt.

Backends in priority order: the user's own text; Gemini when an API key is set (and the project is
not offline); a hub VLM (default SmolVLM-256M-Instruct). Offline without a cached VLM the caption is
absent with the reason "offline: type a caption". Truncating long captions to the text encoder's
window is the pipeline's job, not this module's.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from . import hub
from .base import BackendUnavailable, ModalityResult
from .gemini import DEFAULT_GEMINI_MODEL, gemini_api_key, gemini_caption
from .hub import HubExtractor

DEFAULT_CAPTION_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
OFFLINE_REASON = "offline: type a caption"

# Supplement Table 7, with a short example caption in the same style.
CAPTION_PROMPT = (
    "Write a four sentence caption in English for this image. In the first sentence describe the style "
    "and type (painting, photo, etc) of the image. Describe in the remaining sentences the contents and "
    "composition of the image. Only use language that would be used to prompt a text to image model. "
    'Do not include usage. Comma separate keywords rather than using "or". Example: A photograph of a '
    "lion. The lion is sitting on grass with its mouth open, showing its tongue and teeth. Tall dry grass "
    "fills the background. Warm afternoon light."
)

_PREAMBLES = [
    r"(sure|certainly|of course|okay|ok|absolutely)\b[!.,:]?",
    r"here(?:'s| is| are)\b[^:\n]{0,80}:",
    r"(caption|assistant|answer)\s*:",
]
_PREAMBLE = re.compile(r"^\s*(?:" + "|".join(_PREAMBLES) + r")\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’*"


def clean_caption(text: str) -> str:
    """Strip chat preambles ("Sure!", "Here is a caption:"), surrounding quotes and markdown, join
    lines, and drop a last sentence cut off by the token budget. Raises ``ValueError`` if empty."""
    text = " ".join(text.split())
    previous = None
    while previous != text:
        previous = text
        text = _PREAMBLE.sub("", text).strip().strip(_QUOTES).strip()
    if text and text[-1] not in ".!?" and "." in text:
        text = text[: text.rfind(".") + 1]
    if not text:
        raise ValueError("the model returned an empty caption")
    return text


class CaptionExtractor(HubExtractor):
    """Caption of an image in the paper's captioning style.

    ``user_map`` may be the user's own caption text (it wins).

    Args:
        model_id: hub id or local folder of an ``AutoModelForImageTextToText`` model (default
            ``DEFAULT_CAPTION_MODEL``).
        max_new_tokens: generation budget (about four short sentences).
        prompt: the captioning instruction.
        use_gemini: try Gemini first when ``GEMINI_API_KEY``/``GOOGLE_API_KEY`` is set.
        gemini_model: the Gemini model name.
        model, processor: an already built model and processor (tests, custom weights).
    """

    name = "caption"
    source = "vlm"
    model_class = "AutoModelForImageTextToText"
    processor_class = "AutoProcessor"
    default_model_id = DEFAULT_CAPTION_MODEL
    what = "caption model"

    def __init__(
        self,
        device: Any = "cpu",
        dtype: Any = None,
        model_id: str | None = None,
        max_new_tokens: int = 60,
        prompt: str = CAPTION_PROMPT,
        use_gemini: bool = True,
        gemini_model: str = DEFAULT_GEMINI_MODEL,
        model: Any = None,
        processor: Any = None,
    ):
        super().__init__(device, dtype, model_id, model, processor)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens, self.prompt = max_new_tokens, prompt
        self.use_gemini, self.gemini_model = use_gemini, gemini_model

    def _gemini_on(self) -> bool:
        return self.use_gemini and gemini_api_key() is not None and not hub.env_offline()

    def settings(self) -> dict[str, Any]:
        gemini = self.gemini_model if self._gemini_on() else None
        return {
            **super().settings(),
            "tokens": self.max_new_tokens,
            "prompt": self.prompt,
            "gemini": gemini,
        }

    def backends(self, image, user_map, upscaled):
        if isinstance(user_map, str) and not user_map.strip():
            user_map = None
        found = super().backends(image, user_map, upscaled)
        if self._gemini_on():
            found.insert(-1, ("gemini", lambda: self._from_gemini(image)))
        return found

    def from_user(self, user_map: str) -> ModalityResult:
        if not isinstance(user_map, str):
            raise TypeError(f"a caption must be text, got {type(user_map).__name__}")
        return ModalityResult(name=self.name, text=user_map.strip(), raw=user_map)

    def from_image(self, image: Image.Image, upscaled: bool) -> ModalityResult:
        return self._cleaned(self.generate(image))

    def _from_gemini(self, image: Image.Image) -> ModalityResult:
        return self._cleaned(gemini_caption(image, self.prompt, model=self.gemini_model))

    def _cleaned(self, raw: str) -> ModalityResult:
        return ModalityResult(name=self.name, text=clean_caption(raw), raw=raw)

    def _loaded(self) -> tuple[Any, Any]:
        try:
            return self.model.get()
        except BackendUnavailable as e:
            if hub.offline_reason() is None:
                raise
            raise BackendUnavailable(f"{OFFLINE_REASON} ({e})") from e

    def generate(self, image: Image.Image) -> str:
        """The VLM's raw answer to the captioning prompt (greedy, ``max_new_tokens``)."""
        import torch

        model, processor = self._loaded()
        content = [{"type": "image"}, {"type": "text", "text": self.prompt}]
        messages = [{"role": "user", "content": content}]
        chat = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=chat, images=[image], return_tensors="pt").to(device=self.device, dtype=model.dtype)
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = ids[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
