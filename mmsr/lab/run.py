"""``lab run``: plan a sweep, run it (resumable, split over processes), one CSV row per output.

The plan is the union of the paper's studies around one base setting (the default cfg mode and
guidance of ``UpscaleSettings`` and tau = 1 unless the sweep leaves them out):

* compare (Table 1): every method at the base setting;
* cfg (Fig. 10, Table 3): MMSR over guidance x cfg mode;
* ablation (Fig. 8): MMSR over modality subsets;
* temperature (Fig. 9): MMSR with one modality's tau changed at a time;
* captions (hallucination): caption-conditioned methods with a swapped or empty caption;

each for every seed. Settings are projected onto the axes a method consumes, so shared points
(the base setting belongs to every study) run once. A row's id hashes (image, method, setting,
caption, seed): a rerun skips finished ids, and under ``accelerate launch`` process k takes the
pending jobs with index % num_processes == k.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..conditioning import MODALITIES
from ..constants import SCALE
from ..guidance import check_cfg_mode
from ..imageio import save_atomic
from ..presets import get_preset
from ..settings import SPECS, UpscaleSettings
from .data import derangement, find_images, load_captions, prepare
from .methods import WRONG_CONTEXT, Method, Setting, check_subset, method_names
from .results import LEGACY_METHODS, RESULTS, RUN_FILE, ShardWriter, done_ids, merge, shard_path

MIN_CROP = 8  # LR pixels: the model's smallest input side
MAX_NAME = 120  # characters of an image's folder name (file systems allow 255 bytes)
_UNSAFE = re.compile(r"[^\w.-]")  # kept in folder names: letters and digits of any script, _ . -
CAPTION_KINDS = ("true", "swap", "empty")
CONTEXT_SEED = 0  # of the derangement that gives each image another's maps (subset wrong-context)
AUTO = "<auto>"
_ID_NAMES = {new: old for old, new in LEGACY_METHODS.items()}


@dataclass
class RunConfig:
    """Everything ``lab run`` needs; ``invariants()`` must not change between resumed runs."""

    data: Path
    out: Path
    methods: list[str] = field(default_factory=lambda: ["all"])
    lr: str = "bicubic"
    captions: Path | None = None
    auto_caption: bool = False
    guidance: list[float] | None = None  # None: the preset's default w
    cfg_modes: list[str] = field(default_factory=lambda: [SPECS["cfg_mode"].default])
    subsets: list[str] = field(default_factory=lambda: ["all"])
    temperatures: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    caption_kinds: list[str] = field(default_factory=lambda: ["true", "swap"])
    preset: str = "lite"
    checkpoint: str | None = None
    steps: int | None = None
    residual_scale: float | None = None  # None: each checkpoint's own
    device: str | None = None
    metrics: list[str] | None = None
    crop: int | None = None
    lr_seed: int = 0
    limit: int | None = None
    report: bool = True
    maps: dict[str, Path] = field(default_factory=dict)  # modality -> folder of user maps (see data.py)

    def validate(self) -> RunConfig:
        self.methods = method_names(self.methods)
        if self.guidance is None:
            self.guidance = [get_preset(self.preset).default_guidance]
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1 (the number of images to use), got {self.limit}")
        if self.crop is not None and self.crop < MIN_CROP:
            raise ValueError(
                f"--crop must be at least {MIN_CROP} (LR pixels; the HR crop is {SCALE}x that), got {self.crop}"
            )
        for mode in self.cfg_modes:
            check_cfg_mode(mode)
        for subset in self.subsets:
            check_subset(subset)
        for kind in self.caption_kinds:
            if kind not in CAPTION_KINDS:
                raise ValueError(f"caption kind {kind!r} must be one of {', '.join(CAPTION_KINDS)}")
        for name in self.temperatures:
            if name not in MODALITIES:
                raise ValueError(f"unknown modality {name!r} in --temperature; expected {', '.join(MODALITIES)}")
        for name, folder in self.maps.items():
            if name not in MODALITIES:
                raise ValueError(f"unknown modality {name!r} in --maps; expected {', '.join(MODALITIES)}")
            if not Path(folder).is_dir():
                raise ValueError(f"--maps {name}={folder}: no such folder")
        if not (self.guidance and self.cfg_modes and self.seeds):
            raise ValueError("--guidance, --cfg-modes and --seeds need at least one value each")
        # the settings' own checks, now rather than one failed row at a time
        for g in self.guidance:
            UpscaleSettings(guidance=g)
        for seed in self.seeds:
            UpscaleSettings(seed=seed, steps=self.steps, residual_scale=self.residual_scale)
        for name, taus in self.temperatures.items():
            for tau in taus:
                UpscaleSettings(temperatures={name: tau})
        return self

    def base(self) -> Setting:
        """The setting every study varies around: the default cfg mode and w when swept, else the first value."""
        default, w = UpscaleSettings(), get_preset(self.preset).default_guidance
        cfg = default.cfg_mode if default.cfg_mode in self.cfg_modes else self.cfg_modes[0]
        guidance = w if w in self.guidance else self.guidance[0]
        return Setting(cfg_mode=cfg, guidance=float(guidance), subset="all", caption="true")

    def invariants(self) -> dict:
        """What makes rows of two runs comparable; a resumed run must agree on all of it."""
        return {
            "data": str(Path(self.data).resolve()),
            "lr": self.lr,
            "lr_seed": self.lr_seed,
            "crop": self.crop,
            "preset": self.preset,
            "checkpoint": self.checkpoint,
            "steps": self.steps,
            # only when given, so results folders written before --maps existed still resume
            **({"maps": {k: str(Path(v).resolve()) for k, v in sorted(self.maps.items())}} if self.maps else {}),
            **({} if self.residual_scale is None else {"residual_scale": self.residual_scale}),
        }


@dataclass(frozen=True)
class Job:
    image: str
    method: str
    setting: Setting
    seed: int
    caption_key: str  # the caption text, or "<auto>:<image>" when the captioner decides at run time
    folder: str = ""  # the image's folder name under images/ and inputs/ (see output_folders)

    @property
    def id(self) -> str:
        method = _ID_NAMES.get(self.method, self.method)  # a renamed method keeps its ids: old folders resume
        key = json.dumps([self.image, method, asdict(self.setting), self.caption_key, self.seed])
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def output(self) -> str:
        return f"images/{self.folder}/{self.method}/{self.setting.slug()}_seed{self.seed}.png"


def output_folders(image_ids: list[str]) -> dict[str, str]:
    """A folder name per image id, injective over ``image_ids``: the id itself when it is already a
    safe single name (``x.b.png`` and ``x_b.png`` stay apart), else the id made safe plus a short hash
    of it; also a hash when two names would be one on a case-folding file system. A clash left after
    that (a file named like another's hashed name) is a ``ValueError``, never an overwrite."""
    safe = {i: _safe(i) for i in image_ids}
    shared = Counter(_fold(s) for s in safe.values())
    names = {i: s if s == i and shared[_fold(s)] == 1 else _hashed(s, i) for i, s in safe.items()}
    seen: dict[str, str] = {}
    for image_id, name in names.items():
        other = seen.setdefault(_fold(name), image_id)
        if other != image_id:
            raise ValueError(f"images {other!r} and {image_id!r} would share the output folder {name!r}; rename one")
    return names


def _safe(image_id: str) -> str:
    name = _UNSAFE.sub("_", image_id).lstrip(".")
    return name[:MAX_NAME] or "_"


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def _hashed(name: str, image_id: str) -> str:
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    return f"{stem}-{hashlib.sha1(image_id.encode()).hexdigest()[:8]}{dot}{ext}"


def study_settings(config: RunConfig) -> tuple[list[Setting], list[Setting]]:
    """``(sweep, caption_variants)``: MMSR's sweep points (the base first) and the base setting
    with each non-true caption kind."""
    base = config.base()
    sweep = [base]
    sweep += [replace(base, cfg_mode=c, guidance=float(g)) for c in config.cfg_modes for g in config.guidance]
    sweep += [replace(base, subset=s) for s in config.subsets]
    for name, taus in config.temperatures.items():
        sweep += [replace(base, temperatures=((name, float(t)),) if t != 1 else ()) for t in taus]
    variants = [replace(base, caption=k) for k in config.caption_kinds if k != "true"]
    return list(dict.fromkeys(sweep)), variants


def plan(
    config: RunConfig,
    image_ids: list[str],
    captions: dict[str, str],
    methods: dict[str, Method],
) -> tuple[list[Job], list[str]]:
    """The jobs in a stable order (image, method, setting, seed), and notes for the user."""
    sweep, variants = study_settings(config)
    partner = derangement(image_ids)
    folders = output_folders(image_ids)
    notes = []
    if any(v.caption == "swap" for v in variants) and not partner:
        notes.append("caption swap needs at least two images: skipped")

    def caption_key(image_id: str, kind: str) -> str | None:
        if kind == "empty":
            return ""
        source = image_id if kind == "true" else partner.get(image_id)
        if source is None:
            return None
        return captions.get(source, f"{AUTO}:{source}" if config.auto_caption else "")

    jobs, useless_swaps = [], 0
    for image_id in image_ids:
        for name, method in methods.items():
            # only MMSR itself is swept; other methods run at the base setting (Table 1)
            points = [*(sweep if "subset" in method.axes else sweep[:1]), *(variants if method.uses_caption else [])]
            settings = [s.project(method.axes) for s in points]
            for setting in dict.fromkeys(settings):
                key = caption_key(image_id, setting.caption or "true") if method.uses_caption else ""
                if key is None:
                    continue
                if setting.caption == "swap" and key == caption_key(image_id, "true"):
                    useless_swaps += 1
                    continue
                jobs += [Job(image_id, name, setting, seed, key, folders[image_id]) for seed in config.seeds]
    if useless_swaps:
        notes.append(f"{useless_swaps} caption swaps skipped: the other image's caption is the same (give captions)")
    _check_outputs_distinct(jobs)
    return jobs, notes


def _check_outputs_distinct(jobs: list[Job]) -> None:
    """Two jobs writing one file would silently overwrite each other's image: refuse the plan."""
    seen: dict[str, Job] = {}
    for job in jobs:
        other = seen.setdefault(job.output(), job)
        if other is not job:
            raise ValueError(
                f"two rows would write {job.output()} ({other.method} {other.setting.slug()} and "
                f"{job.method} {job.setting.slug()} on {job.image!r}); make the swept values differ more"
            )


def check_run_file(out: Path, config: RunConfig) -> None:
    path = out / RUN_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text()).get("invariants", {})
    new = config.invariants()
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in {**old, **new} if old.get(k) != new.get(k)]
    if changed:
        raise ValueError(f"{out} holds results of a different run ({'; '.join(changed)}); choose another --out")


@dataclass
class RunSummary:
    planned: int
    skipped: int
    ran: int
    errors: int
    unavailable: dict[str, str]
    notes: list[str]
    rows: int = 0
    ok: int = 0  # finished rows in the results, this run's and earlier ones
    first_error: str = ""
    main_process: bool = True


class JobRunner:
    """Runs jobs of one process: prepares inputs once, resolves captions, scores, writes rows."""

    def __init__(
        self,
        config: RunConfig,
        paths: dict[str, Path],
        captions: dict[str, str],
        methods,
        scorer,
        process: int,
    ):
        self.config, self.paths, self.captions = config, paths, captions
        self.methods, self.scorer, self.process = methods, scorer, process
        self.folders = output_folders(list(paths))
        self._inputs: dict = {}

    def inputs(self, image_id: str):
        if image_id not in self._inputs:
            item = prepare(
                image_id,
                self.paths[image_id],
                self.config.lr,
                crop=self.config.crop,
                seed=self.config.lr_seed,
                maps=self.config.maps,
            )
            folder = self.config.out / "inputs" / self.folders[image_id]
            save_atomic(item.lr, folder / "lr.png", overwrite=True)
            if item.hr is not None:
                save_atomic(item.hr, folder / "hr.png", overwrite=True)
            self._inputs[image_id] = item
        return self._inputs[image_id]

    def caption(self, key: str) -> tuple[str, list[str]]:
        if not key.startswith(AUTO):
            return key, []
        if self.methods.engine is None:
            return "", ["no captioner without an MMSR engine: empty caption"]
        result = self.methods.engine.caption(self.inputs(key.split(":", 1)[1]).lr)
        return result.text or "", [] if result.available else [f"no caption: {result.reason}"]

    def context(self, job: Job):
        """For the wrong-context ablation, the image whose maps (user maps and extracted) replace this
        one's: another image of the set, by a derangement with a fixed seed (the same in every
        process and rerun); else ``None``."""
        if job.setting.subset != WRONG_CONTEXT:
            return None
        partner = derangement(sorted(self.paths), seed=CONTEXT_SEED).get(job.image)
        if partner is None:
            raise ValueError("the wrong-context ablation needs at least two images")
        return self.inputs(partner)

    def run(self, job: Job) -> dict:
        method = self.methods.methods[job.method]
        row = self._describe(job, method)
        try:
            item = self.inputs(job.image)
            caption, notes = self.caption(job.caption_key)
            row["caption"] = caption
            start = time.perf_counter()
            context = self.context(job)
            source = context or item  # whose maps this row is given
            notes += source.notes if "subset" in method.axes else []
            out = method.run(
                item.lr,
                caption=caption,
                seed=job.seed,
                setting=job.setting,
                maps=source.maps,
                context=None if context is None else context.lr,
            )
            row["seconds_method"] = time.perf_counter() - start
            save_atomic(out.image, self.config.out / row["output"], overwrite=True)
            start = time.perf_counter()
            scores = self.scorer.score(out.image, lr=item.lr, hr=item.hr)
            row["seconds_metrics"] = time.perf_counter() - start
        except Exception as e:  # noqa: BLE001 - one failed job must not end a long sweep
            row.update(error=f"{type(e).__name__}: {e}", status="error", finished=_now())
            return row
        row.update({k: s.value for k, s in scores.items() if s.available})
        row["unavailable"] = json.dumps({k: s.reason for k, s in scores.items() if not s.available})
        row["timings"] = json.dumps({k: round(v, 4) for k, v in out.timings.items()})
        row["warnings"] = " | ".join(notes + out.warnings)
        row.update(status="ok", finished=_now())
        return row

    def _describe(self, job: Job, method: Method) -> dict:
        s = job.setting
        taus = {f"tau_{m}": s.tau(m) if "temperatures" in method.axes else None for m in MODALITIES}
        folder = f"inputs/{job.folder}"
        return dict(
            id=job.id, image=job.image, method=job.method, cfg_mode=s.cfg_mode, guidance=s.guidance,
            subset=s.subset, **taus, caption_kind=s.caption, seed=job.seed, output=job.output(),
            lr_path=f"{folder}/lr.png", hr_path="" if self.config.lr == "given" else f"{folder}/hr.png",
            process=self.process,
        )  # fmt: skip


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def run_lab(config: RunConfig, *, on_row: Callable[[dict], None] | None = None, methods=None) -> RunSummary:
    """Run (or resume) the sweep of ``config``; see the module docstring.

    ``on_row`` is called after each row is on disk; ``methods`` is a ready ``MethodSet`` (tests).
    """
    import torch
    from accelerate import PartialState

    config.validate()
    # cpu=True lets torchrun-launched processes on a machine without CUDA form a gloo group
    state = PartialState(cpu=config.device == "cpu" or not torch.cuda.is_available())
    device = config.device or str(state.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    check_run_file(out, config)
    # 1. Inputs, methods and the plan: the same in every process.
    paths = dict(find_images(config.data, config.limit, exclude=out))
    captions = load_captions(config.data, config.captions, list(paths))
    methods = methods or _load_methods(config, device)
    jobs, notes = plan(config, list(paths), captions, methods.methods)
    # 2. Every process reads the same finished set before anyone writes, then takes its share.
    done = done_ids(out)
    state.wait_for_everyone()
    pending = [j for j in jobs if j.id not in done]
    mine = pending[state.process_index :: state.num_processes]
    if state.is_main_process:
        _write_run_file(out, config, methods.unavailable, notes)
    # 3. Run this process's jobs into its own shard.
    from ..metrics import Scorer

    runner = JobRunner(config, paths, captions, methods, Scorer(config.metrics, device=device), state.process_index)
    desc = f"lab run ({len(pending)} of {len(jobs)} rows to do)"
    errors = _execute(runner, mine, shard_path(out, state.process_index), desc, state.is_main_process, on_row)
    # 4. Once all are done, the main process merges the shards (and writes the report).
    state.wait_for_everyone()
    summary = RunSummary(len(jobs), len(jobs) - len(pending), len(mine), errors, methods.unavailable, notes)
    summary.main_process = state.is_main_process
    if state.is_main_process:
        rows = merge(out, remove_shards=True)
        summary.rows, summary.ok = len(rows), sum(r["status"] == "ok" for r in rows)
        summary.first_error = next((f"{r['method']} on {r['image']}: {r['error']}" for r in rows if r.get("error")), "")
        if config.report:
            from .report import build_report

            build_report(out)
    return summary


def _load_methods(config: RunConfig, device: str):
    from .methods import build_methods

    methods = build_methods(
        config.methods,
        preset=config.preset,
        checkpoint=config.checkpoint,
        device=device,
        steps=config.steps,
        residual_scale=config.residual_scale,
    )
    if not methods.methods:
        reasons = "; ".join(f"{k}: {v}" for k, v in methods.unavailable.items())
        raise ValueError(f"none of the requested methods can run here: {reasons}")
    return methods


def _execute(runner: JobRunner, jobs: list[Job], shard: Path, desc: str, show: bool, on_row) -> int:
    """Run ``jobs``, appending each row to ``shard`` as it finishes; returns the number that failed."""
    from tqdm.auto import tqdm

    errors = 0
    with ShardWriter(shard) as writer:
        bar = tqdm(jobs, desc=desc, unit="row", disable=not show)
        for job in bar:
            bar.set_postfix_str(f"{job.method} {job.image}", refresh=False)
            row = runner.run(job)
            errors += row["status"] == "error"
            writer.write(row)
            if on_row is not None:
                on_row(row)
    return errors


def _write_run_file(out: Path, config: RunConfig, unavailable: dict[str, str], notes: list[str]) -> None:
    info = {
        "invariants": config.invariants(),
        "base": asdict(config.base()),
        "sweep": {
            "methods": config.methods, "guidance": config.guidance, "cfg_modes": config.cfg_modes,
            "subsets": config.subsets, "temperatures": config.temperatures, "seeds": config.seeds,
            "caption_kinds": config.caption_kinds, "maps": config.maps,
        },
        "unavailable_methods": unavailable,
        "notes": notes,
        "results": RESULTS,
    }  # fmt: skip
    tmp = out / f".{RUN_FILE}.part"
    tmp.write_text(json.dumps(info, indent=2, default=str))
    tmp.replace(out / RUN_FILE)
