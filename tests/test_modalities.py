"""Modality extractors: real Canny, tiny random Depth Anything / Mask2Former, VOC mapping, flat
guard, cache, offline paths. No network: hub backends get injected models or report absent."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from mmsr.modalities import (
    CAPTION_PROMPT,
    COCO_TO_VOC,
    EXTRACTORS,
    LABEL_SPACES,
    MAP_SIZE,
    VOC_CLASSES,
    CaptionExtractor,
    DepthExtractor,
    EdgeExtractor,
    ExtractorCache,
    ModalityExtractor,
    ModalityResult,
    SegmentationExtractor,
    canny_edges,
    clean_caption,
    extract_all,
    gemini,
    hub,
    is_flat,
    label_lookup,
    render_depth,
    render_edges,
    render_label_map,
    voc_colormap,
)
from mmsr.modalities.palette import colors_to_ids, user_label_ids

NOT_CACHED = "mmsr-tests/not-a-cached-model"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setattr(hub, "is_cached", lambda model_id: False)  # never load a real checkpoint


def rgb(name: str) -> np.ndarray:
    image = getattr(data, name)()
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


def lr_of(name: str, side: int = 64) -> Image.Image:
    return Image.fromarray(rgb(name)).resize((side, side), Image.BICUBIC)


def noise_image(side: int = 64, sigma: float = 2.0, seed: int = 0) -> Image.Image:
    noise = np.random.default_rng(seed).normal(128, sigma, (side, side, 1)).repeat(3, axis=2)
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))


def assert_map(result: ModalityResult, source: str) -> None:
    assert result.available, result.reason
    assert result.source == source
    assert result.map.size == (MAP_SIZE, MAP_SIZE) and result.map.mode == "RGB"
    assert result.seconds > 0


# -- edges ----------------------------------------------------------------------------------------


def test_canny_on_upsampled_lr_has_plausible_edges_and_white_on_black_map():
    lr = lr_of("camera", 64)
    result = EdgeExtractor()(lr)
    assert_map(result, "canny")
    assert result.raw.shape == (256, 256)  # bicubic x4
    assert set(np.unique(result.raw)) <= {0, 255}
    assert 0.02 < result.extras["edge_fraction"] < 0.3
    pixels = np.asarray(result.map)
    assert set(np.unique(pixels)) == {0, 255} and (pixels == 255).mean() < 0.5


def test_already_upscaled_input_is_not_upsampled_again():
    sr = Image.fromarray(rgb("astronaut")).resize((160, 128))
    assert EdgeExtractor()(sr, upscaled=True).raw.shape == (128, 160)
    assert EdgeExtractor()(sr).raw.shape == (512, 640)


def test_canny_thresholds_follow_the_image_contrast():
    image = rgb("astronaut")
    full = canny_edges(image) > 0
    low_contrast = canny_edges((image * 0.5 + 64).astype(np.uint8)) > 0
    iou = (full & low_contrast).sum() / (full | low_contrast).sum()
    assert iou > 0.6, iou  # fixed thresholds would lose most edges at half contrast


def test_thin_edges_survive_rendering_of_a_large_map():
    edges = np.zeros((2048, 2048), np.uint8)
    edges[1000, :] = 255  # one-pixel line, 8x larger than the map
    edges[:, 333] = 255
    rendered = np.asarray(render_edges(edges))[..., 0]
    assert (rendered[:, 100] == 255).sum() >= 1 and (rendered[125, :] == 255).sum() == MAP_SIZE
    assert (rendered == 255).mean() < 0.02


def test_canny_speed_on_512_upscaled(record_property):
    up = np.asarray(lr_of("coffee", 128).resize((512, 512), Image.BICUBIC))
    canny_edges(up)
    start = time.perf_counter()
    for _ in range(10):
        canny_edges(up)
    ms = (time.perf_counter() - start) / 10 * 1000
    record_property("canny_512_ms", ms)
    assert ms < 200


# -- depth ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_depth():
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    torch.manual_seed(0)
    backbone = Dinov2Config(
        image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=32, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
    )  # fmt: skip
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8, head_hidden_size=8,
    )  # fmt: skip
    processor = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14)
    return DepthAnythingForDepthEstimation(config), processor


def test_depth_anything_tiny_random_gives_normalised_grey_map(tiny_depth):
    model, processor = tiny_depth
    extractor = DepthExtractor(device="cpu", dtype=torch.float32, model=model, processor=processor)
    lr = lr_of("chelsea", 48).resize((64, 48))
    result = extractor(lr)
    assert_map(result, "depth-anything-v2")
    assert result.raw.shape == (48, 64) and result.raw.min() == 0 and result.raw.max() == 1
    pixels = np.asarray(result.map)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    assert extractor.model.get() is extractor.model.get()  # loaded once, reused


def test_render_depth_is_near_bright_and_scale_free():
    disparity = np.tile(np.linspace(1, 5, 300, dtype=np.float32), (200, 1))  # larger = nearer
    grey = np.asarray(render_depth(disparity))[..., 0]
    assert grey[:, 0].max() == 0 and grey[:, -1].min() == 255
    assert np.array_equal(np.asarray(render_depth(disparity * 7 + 3)), np.asarray(render_depth(disparity)))
    assert np.asarray(render_depth(np.ones((10, 10)))).max() == 0  # constant: no NaN


def test_user_depth_map_wins_over_the_model_and_is_normalised():
    user = Image.fromarray(np.tile(np.arange(50, 150, dtype=np.uint8), (40, 1)))
    result = DepthExtractor(model_id=NOT_CACHED)(lr_of("astronaut"), user_map=user)
    assert_map(result, "user")
    assert result.raw.shape == (40, 100) and result.raw.min() == 0 and result.raw.max() == 1


# -- segmentation ---------------------------------------------------------------------------------

COCO_SUBSET = [
    *COCO_TO_VOC,
    "truck",
    "table-merged",
    "wall-other-merged",
    "sky-other-merged",
]


@pytest.fixture(scope="module")
def tiny_mask2former():
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[2, 2, 2, 2], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=32, num_queries=8,
        id2label=dict(enumerate(COCO_SUBSET)), label2id={n: i for i, n in enumerate(COCO_SUBSET)},
    )  # fmt: skip
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    return Mask2FormerForUniversalSegmentation(config), processor


def test_mask2former_tiny_random_gives_voc_palette_map(tiny_mask2former):
    model, processor = tiny_mask2former
    extractor = SegmentationExtractor(device="cpu", dtype=torch.float32, model=model, processor=processor)
    result = extractor(lr_of("coffee", 48).resize((80, 48)))  # non-square: processor pads
    assert_map(result, "mask2former")
    assert result.raw.shape == (48, 80) and result.raw.max() < len(VOC_CLASSES)
    palette = {tuple(c) for c in voc_colormap(len(VOC_CLASSES))}
    assert {tuple(c) for c in np.asarray(result.map).reshape(-1, 3)} <= palette
    assert set(result.extras["classes"]) <= set(VOC_CLASSES)


def test_coco_panoptic_names_map_to_voc_ids():
    voc = LABEL_SPACES["voc"]
    lut = label_lookup(dict(enumerate(COCO_SUBSET)), voc)
    for i, name in enumerate(COCO_SUBSET):
        expected = COCO_TO_VOC.get(name, 0)
        assert lut[i] == expected, name
        if expected:
            assert voc.classes[expected] != "background"
    assert sorted(COCO_TO_VOC.values()) == list(range(1, 21))
    assert COCO_TO_VOC["couch"] == VOC_CLASSES.index("sofa") and COCO_TO_VOC["tv"] == VOC_CLASSES.index("tv/monitor")
    assert voc.class_id("person;individual;someone") == 15 and voc.class_id("aeroplane") == 1
    with pytest.raises(ValueError, match="none of the model"):
        label_lookup({0: "LABEL_0", 1: "LABEL_1"}, voc)


def test_voc_palette_is_the_standard_bit_interleaved_colour_map():
    cmap = voc_colormap()
    assert cmap[0].tolist() == [0, 0, 0] and cmap[1].tolist() == [128, 0, 0]
    assert cmap[15].tolist() == [192, 128, 128] and cmap[20].tolist() == [0, 64, 128]
    assert cmap[255].tolist() == [224, 224, 192]


def _id_map() -> np.ndarray:
    ids = np.zeros((64, 96), np.uint8)
    for k in range(1, 21):
        ids[
            (k - 1) // 5 * 16 : (k - 1) // 5 * 16 + 16,
            (k - 1) % 5 * 19 : (k - 1) % 5 * 19 + 19,
        ] = k
    return ids


def test_render_label_map_round_trips_through_user_rgb_maps():
    ids = _id_map()
    rendered = render_label_map(ids)
    assert rendered.size == (MAP_SIZE, MAP_SIZE)
    expected = np.asarray(Image.fromarray(ids).resize((MAP_SIZE, MAP_SIZE), Image.NEAREST))
    back = user_label_ids(rendered, LABEL_SPACES["voc"])
    assert (back == expected).mean() > 0.98
    buffer = io.BytesIO()
    rendered.save(buffer, format="JPEG", quality=90)  # palette colours survive mild compression
    jpeg = np.asarray(Image.open(buffer))
    assert (colors_to_ids(jpeg, LABEL_SPACES["voc"]) == back).mean() > 0.95


def test_user_label_maps_as_ids_palette_image_or_photo():
    voc = LABEL_SPACES["voc"]
    ids = _id_map()
    ids[0, :] = 255  # VOC void border -> background
    palette_image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    palette_image.putpalette(voc_colormap().tobytes())
    for user in (
        Image.fromarray(ids),
        palette_image,
        ids,
        Image.fromarray(ids).convert("RGB"),
    ):
        got = user_label_ids(user, voc)
        assert got[0].max() == 0 and np.array_equal(got[1:], ids[1:])
    with pytest.raises(ValueError, match="not voc palette colours"):
        user_label_ids(Image.fromarray(rgb("coffee")), voc)
    with pytest.raises(ValueError, match="class ids"):
        user_label_ids(Image.fromarray(rgb("camera")[..., 0]), voc)


def test_rejected_user_map_falls_back_and_reports_every_reason():
    result = SegmentationExtractor(model_id=NOT_CACHED)(lr_of("coffee"), user_map=Image.fromarray(rgb("coffee")))
    assert not result.available and result.map is None
    assert "user failed" in result.reason and "offline" in result.reason and NOT_CACHED in result.reason


def test_render_label_map_on_a_training_map():
    paths = sorted(Path("/work/shared/data/seg").rglob("*.png"))[:3]
    if not paths:
        pytest.skip("shared VOC maps not present")
    palette = {tuple(c) for c in voc_colormap(21)}
    for path in paths:
        rendered = np.asarray(render_label_map(np.asarray(Image.open(path))))
        assert rendered.shape == (MAP_SIZE, MAP_SIZE, 3)
        assert {tuple(c) for c in rendered.reshape(-1, 3)} <= palette


# -- caption --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        'Sure! Here is a caption: "A photograph of a cat. The cat sits on a sofa."',
        "Here's a four sentence caption for this image:\n\nA photograph of a cat. The cat sits on a sofa.",
        "  **A photograph of a cat. The cat sits on a sofa.**",
        "Caption: A photograph of a cat. The cat sits on a sofa. Warm light falls from the",
    ],
)
def test_clean_caption_strips_preambles_quotes_and_cut_sentences(raw):
    assert clean_caption(raw) == "A photograph of a cat. The cat sits on a sofa."


def test_caption_prompt_is_the_papers_in_context_prompt():
    assert CAPTION_PROMPT.startswith("Write a four sentence caption in English for this image.")
    assert 'Comma separate keywords rather than using "or". Example: A photograph of' in CAPTION_PROMPT
    with pytest.raises(ValueError, match="empty"):
        clean_caption('Sure! ""')


class FakeVLMProcessor:
    """Duck-typed stand-in for a SmolVLM processor (a real one needs a tokenizer from the hub)."""

    def __init__(self, answer: str):
        self.answer, self.messages = answer, None

    def apply_chat_template(self, messages, add_generation_prompt):
        self.messages = messages
        return "<chat>"

    def __call__(self, text, images, return_tensors):
        from transformers import BatchFeature

        assert text == "<chat>" and len(images) == 1
        return BatchFeature(
            {
                "input_ids": torch.ones(1, 5, dtype=torch.long),
                "pixel_values": torch.zeros(1, 3, 8, 8),
            }
        )

    def batch_decode(self, ids, skip_special_tokens):
        assert ids.shape == (1, 3)  # only the new tokens
        return [self.answer]


class FakeVLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.kwargs = None

    @property
    def dtype(self):
        return self.weight.dtype

    def generate(self, input_ids, pixel_values, **kwargs):
        self.kwargs = kwargs
        return torch.cat([input_ids, torch.full((1, 3), 7)], dim=1)


def test_vlm_caption_uses_the_prompt_and_a_short_budget():
    processor, model = (
        FakeVLMProcessor("Sure! A photograph of a lion. Tall dry grass."),
        FakeVLM(),
    )
    result = CaptionExtractor(model=model, processor=processor)(lr_of("chelsea"))
    assert result.available and result.source == "vlm" and result.map is None
    assert result.text == "A photograph of a lion. Tall dry grass."
    assert processor.messages[0]["content"][1]["text"] == CAPTION_PROMPT
    assert model.kwargs == {"max_new_tokens": 60, "do_sample": False}


def test_caption_offline_is_absent_at_once_and_user_text_wins():
    extractor = CaptionExtractor()
    start = time.perf_counter()
    result = extractor(lr_of("chelsea"))
    assert time.perf_counter() - start < 0.5
    assert not result.available and result.reason.startswith("offline: type a caption")
    assert extractor(lr_of("chelsea"), user_map="A photo of a cat.").text == "A photo of a cat."


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


def test_gemini_backend_sends_the_key_in_a_header_and_never_reports_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "_probe", lambda host, port: "unreachable in tests")
    monkeypatch.setenv("GEMINI_API_KEY", "secret-key-123")
    seen = {}

    def fake_urlopen(request, timeout):
        seen.update(
            url=request.full_url,
            key=request.get_header("X-goog-api-key"),
            timeout=timeout,
        )
        answer = {"candidates": [{"content": {"parts": [{"text": "Here is a caption: A photo of a cat."}]}}]}
        return FakeResponse(json.dumps(answer).encode())

    monkeypatch.setattr(gemini.urllib.request, "urlopen", fake_urlopen)
    result = CaptionExtractor()(lr_of("chelsea"))
    assert result.source == "gemini" and result.text == "A photo of a cat."
    assert seen["key"] == "secret-key-123" and "secret" not in seen["url"] and seen["timeout"] <= 30

    def failing_urlopen(request, timeout):
        raise OSError(f"connection refused for {request.get_header('X-goog-api-key')}")

    monkeypatch.setattr(gemini.urllib.request, "urlopen", failing_urlopen)
    result = CaptionExtractor()(lr_of("astronaut"))
    assert not result.available and "Gemini" in result.reason and "secret" not in result.reason


def test_gemini_is_not_tried_offline(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "secret-key-123")
    extractor = CaptionExtractor()
    assert [source for source, _ in extractor.backends(lr_of("chelsea"), None, False)] == ["vlm"]


# -- hub availability -----------------------------------------------------------------------------


def test_offline_hub_backends_report_absent_in_well_under_a_second():
    lr = lr_of("astronaut")
    for extractor in (DepthExtractor(), SegmentationExtractor(), CaptionExtractor()):
        start = time.perf_counter()
        result = extractor(lr)
        assert time.perf_counter() - start < 0.5
        assert not result.available and "HF_HUB_OFFLINE=1" in result.reason and "cache" in result.reason


def test_unreachable_hub_is_detected_quickly_and_memoised(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port on this machine: refused
    hub._probe.cache_clear()
    start = time.perf_counter()
    assert "unreachable" in hub.offline_reason()
    assert time.perf_counter() - start < hub.CONNECT_TIMEOUT_S + 0.5
    assert hub._probe.cache_info().currsize == 1 and hub.offline_reason() is not None
    hub._probe.cache_clear()


def test_lazy_model_loads_once_and_remembers_failures():
    calls = []

    def load(model, processor):
        calls.append(1)
        raise RuntimeError("broken weights")

    lazy = hub.LazyModel(load, "thing")
    for _ in range(3):
        with pytest.raises(hub.BackendUnavailable, match="broken weights"):
            lazy.get()
    assert len(calls) == 1


# -- flat guard, registry, extract_all, cache -----------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "chelsea", "rocket"])
def test_real_photos_are_not_flat(name):
    flat, stats = is_flat(lr_of(name, 64))
    assert not flat and stats["edge_fraction"] > 0.05


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (64, 48), (90, 120, 200)),
        Image.fromarray(np.tile(np.linspace(0, 255, 128), (96, 1)).astype(np.uint8)),
        noise_image(sigma=2.0),
        noise_image(side=256, sigma=8.0),
    ],
)
def test_flat_images_are_flat_at_lr_and_sr_scale(image):
    assert is_flat(image)[0]
    assert is_flat(image.resize((image.width * 4, image.height * 4), Image.BICUBIC))[0]


def test_registry_builds_every_extractor_without_loading_anything():
    assert set(EXTRACTORS) == {"caption", "depth", "seg", "edges"}
    start = time.perf_counter()
    extractors = {k: cls(device="cpu", dtype=torch.float32) for k, cls in EXTRACTORS.items()}
    assert time.perf_counter() - start < 0.5
    assert all(isinstance(e, ModalityExtractor) and e.name == k for k, e in extractors.items())


def test_extract_all_offline_switches_and_flat_guard():
    extractors = {k: cls() for k, cls in EXTRACTORS.items()}
    enabled = {"caption": True, "depth": True, "seg": False, "edges": True}
    results = extract_all(
        lr_of("astronaut"),
        extractors=extractors,
        enabled=enabled,
        cache=ExtractorCache(),
    )
    assert list(results) == ["caption", "depth", "seg", "edges"]
    assert results["edges"].available and results["seg"].reason == "switched off"
    assert "offline" in results["depth"].reason and results["caption"].reason.startswith("offline: type a caption")

    flat = extract_all(noise_image(), extractors=extractors, enabled={}, user_maps={"seg": _id_map()})
    assert "flat input" in flat["edges"].reason and "flat input" in flat["depth"].reason
    assert flat["seg"].available and flat["seg"].source == "user"  # a user's own map is trusted
    assert not extract_all(noise_image(), extractors=extractors, enabled={}, flat_guard=False)["edges"].reason


class CountingExtractor(ModalityExtractor):
    name = "edges"

    def __init__(self, device="cpu", dtype=None, level: int = 0):
        super().__init__(device, dtype)
        self.level, self.calls = level, 0

    def settings(self):
        return {"level": self.level}

    def backends(self, image, user_map, upscaled):
        return [("counter", self._run)]

    def _run(self):
        self.calls += 1
        return ModalityResult(
            name="edges",
            map=Image.new("RGB", (MAP_SIZE, MAP_SIZE)),
            raw=np.zeros((64, 64)),
        )


def test_cache_runs_a_backend_once_for_identical_calls():
    cache, counter = ExtractorCache(), CountingExtractor()
    lr = lr_of("coffee")
    first = extract_all(lr, extractors={"edges": counter}, enabled={}, cache=cache)["edges"]
    second = extract_all(lr.copy(), extractors={"edges": counter}, enabled={}, cache=cache)["edges"]
    assert counter.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert second.extras.get("cached") and not first.extras.get("cached") and second.map is first.map
    extract_all(lr, extractors={"edges": counter}, enabled={}, cache=cache, upscaled=True)
    extract_all(lr_of("camera"), extractors={"edges": counter}, enabled={}, cache=cache)
    extract_all(lr, extractors={"edges": CountingExtractor(level=1)}, enabled={}, cache=cache)
    assert counter.calls == 3 and cache.misses == 4


def test_cache_is_bounded_by_entries_and_bytes():
    result = ModalityResult(
        name="edges",
        map=Image.new("RGB", (MAP_SIZE, MAP_SIZE)),
        raw=np.zeros(1000, np.uint8),
    )
    cache = ExtractorCache(max_entries=2)
    for key in "abc":
        cache.put(key, result)
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") is not None
    small = ExtractorCache(max_entries=100, max_bytes=3 * (MAP_SIZE * MAP_SIZE * 3 + 1000))
    for key in "abcde":
        small.put(key, result)
    assert len(small) == 3 and small.nbytes <= small.max_bytes


def test_backend_exceptions_become_absent_with_the_reason():
    class Broken(CountingExtractor):
        def _run(self):
            raise RuntimeError("CUDA out of memory")

    result = Broken()(lr_of("coffee"))
    assert not result.available and result.reason == "counter failed: RuntimeError: CUDA out of memory"
    with pytest.raises(TypeError, match="PIL image"):
        EdgeExtractor()(np.zeros((8, 8, 3), np.uint8))
