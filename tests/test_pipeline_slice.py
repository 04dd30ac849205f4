"""Expected-slice regression test of tiny-random ``MMSRPipeline`` (diffusers style: seeded, 2 steps, CPU).

The slice was computed once and hard-coded: any change to the sampling path of tiny-random (the
paper's path: bicubic condition, DDIM, eq. 4 guidance, eq. 5 temperature) moves it.
"""

import torch

EXPECTED_SLICE = torch.tensor(
    [0.4368, 0.4139, 0.5223, 0.4034, 0.4501, 0.5235, 0.4366, 0.4714, 0.5287,
     0.4388, 0.4151, 0.456, 0.5077, 0.448, 0.4701, 0.4487, 0.4387, 0.498,
     0.5353, 0.5328, 0.499, 0.469, 0.4784, 0.4677, 0.4788, 0.4795, 0.4608]
)  # fmt: skip


def test_tiny_random_expected_slice(tiny_pipe):
    tiny_pipe.set_progress_bar_config(disable=True)
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = tiny_pipe(
        lr,
        "a photo of a cat",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        temperatures={"depth": 0.5},
    )
    assert out.images.shape == (1, 3, 64, 64)
    image_slice = out.images[0, :, -3:, -3:].flatten().cpu()
    assert torch.allclose(image_slice, EXPECTED_SLICE, atol=1e-3), image_slice.tolist()
