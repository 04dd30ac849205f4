"""Optional Gemini captions through the REST API (``urllib``, no SDK).

Used only when ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY`` is set. The key is read from the
environment at call time, sent in a header (never in the URL), and never logged or put into an
error message.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request

from PIL import Image

from .base import BackendUnavailable

GEMINI_URL = "https://generativelanguage.googleapis.com/v1beta/models/{model}:generateContent"
DEFAULT_GEMINI_MODEL = "gemini-2.5-flash-lite"
TIMEOUT_S = 15.0
MAX_SIDE = 768  # the caption needs no more; keeps the request small


def gemini_api_key() -> str | None:
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY") or None


def _png_base64(image: Image.Image) -> str:
    image = image.copy()
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _request(image: Image.Image, prompt: str, model: str, key: str, max_tokens: int) -> urllib.request.Request:
    body = {
        "contents": [
            {
                "parts": [
                    {"text": prompt},
                    {
                        "inline_data": {
                            "mime_type": "image/png",
                            "data": _png_base64(image),
                        }
                    },
                ]
            }
        ],
        "generationConfig": {"temperature": 0.0, "maxOutputTokens": max_tokens},
    }
    headers = {"Content-Type": "application/json", "x-goog-api-key": key}
    return urllib.request.Request(
        GEMINI_URL.format(model=model),
        json.dumps(body).encode(),
        headers,
        method="POST",
    )


def gemini_caption(
    image: Image.Image,
    prompt: str,
    *,
    model: str = DEFAULT_GEMINI_MODEL,
    max_tokens: int = 128,
) -> str:
    """Gemini's answer to ``prompt`` about ``image``; ``BackendUnavailable`` on any failure."""
    key = gemini_api_key()
    if key is None:
        raise BackendUnavailable("Gemini: no GEMINI_API_KEY or GOOGLE_API_KEY set")
    try:
        with urllib.request.urlopen(_request(image, prompt, model, key, max_tokens), timeout=TIMEOUT_S) as response:
            payload = json.load(response)
        parts = payload["candidates"][0]["content"]["parts"]
        return "".join(part.get("text", "") for part in parts)
    except urllib.error.HTTPError as e:
        reason = f"Gemini: HTTP {e.code} {e.reason}"
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        reason = f"Gemini: request failed ({type(e).__name__})"
    raise BackendUnavailable(reason.replace(key, "***"))
