"""Facts of the method shared by light modules (no torch or diffusers import)."""

MODALITIES = ("depth", "seg", "edges")  # order of the segments in the condition sequence
TAU_RANGE = (0.4, 10.0)  # per-modality attention temperature, eq. (5)
SCALE = 4  # MMSR super-resolves x4
MAP_SIZE = 256  # side of every modality map the tokenizer reads
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})  # folders of images
