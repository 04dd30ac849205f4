"""Write the demo's example LR images (``assets/examples/*.png``) and their captions (``examples.json``).

The sources are photographs bundled with scikit-image (``skimage.data``), downscaled with PIL
bicubic to 128 px on the longer side, so the output is deterministic and small. Run from anywhere:
``python assets/make_examples.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from skimage import data

OUT = Path(__file__).resolve().parent / "examples"
LONG_SIDE = 128

# name -> caption in the paper's captioning style (what is in the picture, its material and light)
EXAMPLES = {
    "astronaut": "an astronaut in a white spacesuit smiling in front of an american flag and a model space shuttle",
    "chelsea": "a tabby cat with green eyes and long white whiskers lying on a wooden floor",
    "coffee": "a cup of coffee with latte art on a saucer with a spoon on a red table",
    "rocket": "a white rocket standing on its launch pad under a clear blue sky",
    "camera": "a black and white photo of a man in a coat operating a camera on a tripod in a park",
}


def downscale(image: Image.Image, long_side: int = LONG_SIDE) -> Image.Image:
    scale = long_side / max(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.BICUBIC)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    captions = {}
    for name, caption in EXAMPLES.items():
        image = downscale(Image.fromarray(getattr(data, name)()))  # camera stays greyscale ("L")
        image.save(OUT / f"{name}.png", optimize=True)
        captions[f"{name}.png"] = caption
    (OUT / "examples.json").write_text(json.dumps(captions, indent=2) + "\n")


if __name__ == "__main__":
    main()
