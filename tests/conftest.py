import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def device():
    return torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_pipe():
    from mmsr import load_pipeline

    return load_pipeline("tiny-random")


@pytest.fixture(scope="session")
def astronaut_lr():
    """A real photo (skimage.data) downscaled to a 32x32 LR."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((32, 32), Image.BICUBIC)
