"""The lab: planning, the results CSV (resume, shards), an end-to-end run and report on tiny-random."""

import csv
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from mmsr.cli import run as cli_run
from mmsr.lab.cli import parse_temperature_sweeps
from mmsr.lab.data import derangement, load_captions, prepare
from mmsr.lab.methods import MMSR_AXES, TEXT_AXES, Method, MethodOutput, Setting, build_methods
from mmsr.lab.report import load_report
from mmsr.lab.results import COLUMNS, ShardWriter, collect, merge, read_rows
from mmsr.lab.run import RunConfig, plan, run_lab

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = {
    "astronaut.png": "Photo of an astronaut in a white suit holding a helmet, a flag behind her.",
    "coffee.png": "Photo of a cup of coffee on a saucer seen from above.",
}
SECTIONS = ("Summary", "Table 1", "Fig. 10", "Fig. 8", "Fig. 9", "caption swap", "seed variance")


@pytest.fixture(scope="module")
def lab_data(tmp_path_factory):
    """Two real photos as 64x64 HR (LR 16x16, small for a 2-core CI) and their captions."""
    root = tmp_path_factory.mktemp("lab_data")
    for name, image in (("astronaut.png", data.astronaut()), ("coffee.png", data.coffee())):
        Image.fromarray(image).resize((64, 64), Image.BICUBIC).save(root / name)
    (root / "captions.json").write_text(json.dumps(CAPTIONS))
    return root


class Stub(Method):
    def __init__(self, name, axes=frozenset(), uses_caption=False):
        self.name, self.label, self.axes, self.uses_caption = name, name, frozenset(axes), uses_caption

    def run(self, lr, *, caption, seed, setting, maps=None, context=None):
        return MethodOutput(lr.resize((lr.width * 4, lr.height * 4)))


def test_plan_projects_settings_and_dedupes(tmp_path):
    config = RunConfig(
        data=tmp_path, out=tmp_path, guidance=[1, 4], cfg_modes=["m-cfg", "cfg"], subsets=["all", "-depth"],
        temperatures={"edges": [0.5, 1]}, seeds=[0, 1], caption_kinds=["true", "swap"],
    ).validate()  # fmt: skip
    methods = {
        "mmsr": Stub("mmsr", MMSR_AXES, True),
        "text-only-mmsr": Stub("text-only-mmsr", TEXT_AXES, True),
        "bicubic": Stub("bicubic"),
    }
    jobs, notes = plan(config, ["a.png", "b.png"], {"a.png": "cat", "b.png": "dog"}, methods)
    per_image = [j for j in jobs if j.image == "a.png"]
    # mmsr: base, (m-cfg,1), (cfg,1), (cfg,4), -depth, edges=0.5, swap; text-only: base, swap; bicubic: base
    assert sum(j.method == "mmsr" for j in per_image) == 7 * 2
    assert sum(j.method == "text-only-mmsr" for j in per_image) == 2 * 2
    assert sum(j.method == "bicubic" for j in per_image) == 2
    assert len({j.id for j in jobs}) == len(jobs) and not notes
    swap = next(j for j in per_image if j.setting.caption == "swap")
    assert swap.caption_key == "dog"
    bicubic = next(j for j in per_image if j.method == "bicubic")
    assert bicubic.setting == Setting(caption="") and bicubic.caption_key == ""
    again, _ = plan(config, ["a.png", "b.png"], {"a.png": "cat", "b.png": "dog"}, methods)
    assert [j.id for j in again] == [j.id for j in jobs]  # ids are stable across runs and processes
    one, notes = plan(config, ["a.png"], {}, methods)
    assert all(j.setting.caption != "swap" for j in one) and "at least two images" in notes[0]


def test_sweep_parsing_and_validation(tmp_path):
    assert parse_temperature_sweeps(["depth=0.5,1,2", "edges=2;seg=0.4"]) == {
        "depth": [0.5, 1.0, 2.0],
        "edges": [2.0],
        "seg": [0.4],
    }
    assert parse_temperature_sweeps(["all=2"]) == {"depth": [2.0], "seg": [2.0], "edges": [2.0]}
    with pytest.raises(ValueError, match="unknown modality 'colour'"):
        parse_temperature_sweeps(["colour=2"])
    with pytest.raises(ValueError, match="subset"):
        RunConfig(data=tmp_path, out=tmp_path, subsets=["-colour"]).validate()
    with pytest.raises(ValueError, match="temperature of depth"):
        RunConfig(data=tmp_path, out=tmp_path, temperatures={"depth": [0.1]}).validate()
    with pytest.raises(ValueError, match="guidance"):
        RunConfig(data=tmp_path, out=tmp_path, guidance=[4, 99]).validate()
    assert RunConfig(data=tmp_path, out=tmp_path, guidance=[7, 1]).base().guidance == 7.0


def test_captions_lookup_derangement_and_lr(lab_data, tmp_path):
    table = {"eval/set5/astronaut.png": "long key", "coffee.png": "short key"}
    (tmp_path / "c.json").write_text(json.dumps(table))
    ids = ["astronaut.png", "coffee.png", "sub/none.png"]
    assert load_captions(lab_data, tmp_path / "c.json", ids) == {"astronaut.png": "long key", "coffee.png": "short key"}
    shift = derangement(ids)
    assert sorted(shift.values()) == sorted(ids) and all(k != v for k, v in shift.items())
    a = prepare("coffee.png", lab_data / "coffee.png", "degraded", seed=3)
    b = prepare("coffee.png", lab_data / "coffee.png", "degraded", seed=3)
    assert a.lr.size == (16, 16) and a.hr.size == (64, 64) and a.lr.tobytes() == b.lr.tobytes()
    given = prepare("coffee.png", lab_data / "coffee.png", "given", crop=24)
    assert given.hr is None and given.lr.size == (24, 24)


def test_shards_survive_a_cut_off_row_and_merge_once(tmp_path):
    rows = [{c: "" for c in COLUMNS} | {"id": f"r{i}", "status": "ok", "image": "x"} for i in range(3)]
    shard = tmp_path / "shards" / "rows-p0.csv"
    with ShardWriter(shard) as w:
        w.write(rows[0])
        w.write(rows[1] | {"status": "error", "error": "boom"})
    with open(shard, "a") as f:
        f.write("r2,x,half a row")  # the process died mid-write
    assert [r["id"] for r in read_rows(shard)] == ["r0", "r1"]
    with ShardWriter(shard) as w:  # appending starts on a fresh line
        w.write(rows[1])
        w.write(rows[2])
    with ShardWriter(tmp_path / "shards" / "rows-p1.csv") as w:
        w.write(rows[2])
    merged = merge(tmp_path)
    assert sorted(r["id"] for r in merged) == ["r0", "r1", "r2"] and all(r["status"] == "ok" for r in merged)
    assert len(merge(tmp_path, remove_shards=True)) == 3 and not list((tmp_path / "shards").glob("*.csv"))
    assert [r["id"] for r in collect(tmp_path)] == ["r0", "r1", "r2"]


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_end_to_end_run_resume_and_report(lab_data, tmp_path, tiny_pipe):
    from mmsr.engine import Engine

    out = tmp_path / "results"
    config = RunConfig(
        data=lab_data, out=out, methods=["mmsr", "text-only-mmsr", "bicubic"], preset="tiny-random", steps=1,
        guidance=[4], cfg_modes=["m-cfg", "cfg"], subsets=["all", "-edges"], temperatures={"edges": [0.5]},
        seeds=[0, 1], caption_kinds=["true", "swap"], metrics=["psnr", "ssim", "lr_psnr"], device="cpu",
    )  # fmt: skip
    methods = build_methods(
        config.methods,
        preset="tiny-random",
        checkpoint=None,
        device="cpu",
        steps=1,
        engine=Engine(tiny_pipe, "tiny-random"),
    )
    seen = []

    def stop_after_five(row):
        seen.append(row["id"])
        if len(seen) == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_lab(config, on_row=stop_after_five, methods=methods)
    assert not (out / "results.csv").exists() and len(read_rows(out / "shards" / "rows-p0.csv")) == 5
    assert len(merge(out)) == 5  # what `lab report` does first: the finished rows of the broken run

    summary = run_lab(config, methods=methods)
    assert (summary.skipped, summary.errors) == (5, 0) and summary.ran == summary.planned - 5
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [r["id"] for r in rows]
    # per image and seed: mmsr base, cfg, -edges, edges=0.5, swap; text-only-mmsr base, swap; bicubic
    assert len(ids) == len(set(ids)) == summary.planned == 2 * (5 + 2 + 1) * 2
    assert all(r["status"] == "ok" and (out / r["output"]).is_file() for r in rows)
    assert all(float(r["lr_psnr"]) > 0 and float(r["psnr"]) > 0 for r in rows)
    assert {r["method"] for r in rows} == {"mmsr", "text-only-mmsr", "bicubic"}
    assert Image.open(out / rows[0]["output"]).size == (64, 64)

    markdown, plots = load_report(out)
    assert all(s in markdown for s in SECTIONS), markdown
    assert_links_inside(out)  # the report with every section the lab writes
    assert "**bicubic**" in markdown  # the best PSNR of the Table 1 layout is in bold
    assert {p.name for p in plots} >= {"tradeoff.png", "ablation.png", "caption_swap.png", "seed_variance.png"}
    assert all(p.is_file() and p.is_absolute() for p in plots)
    assert (out / "report.html").read_text().count("<img") == len(plots)

    again = run_lab(config, methods=methods)  # everything done: nothing re-runs, nothing duplicates
    assert again.ran == 0 and len(read_rows(out / "results.csv")) == summary.planned


def test_cli_user_errors(lab_data, tmp_path, capsys):
    assert cli_run(["lab", "report", "--results", str(tmp_path)]) == 2
    assert "no results.csv" in capsys.readouterr().err
    base = ["lab", "run", "--data", str(lab_data), "--out", str(tmp_path / "o"), "--preset", "tiny-random"]
    assert cli_run([*base, "--subsets", "all,-colour"]) == 2
    assert cli_run([*base, "--methods", "mmsr,nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert cli_run([*base, "--maps", "seg"]) == 2
    assert "--maps takes MODALITY=FOLDER, got 'seg'" in capsys.readouterr().err
    assert cli_run([*base, "--maps", f"seg={tmp_path / 'nowhere'}"]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "run.json").write_text(json.dumps({"invariants": {"preset": "lite"}}))
    assert cli_run([*base, "--methods", "bicubic", "--metrics", "psnr"]) == 2
    assert "different run" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_split_the_rows(lab_data, tmp_path):
    """Two CPU processes under ``accelerate launch``: every row once, written by both processes.

    accelerate's ``--cpu`` launcher starts a single process unless MPI is set up, so the test uses
    its torchrun launcher (``--multi_gpu``) with CUDA hidden: the processes join a gloo group.
    """
    out = tmp_path / "split"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "mmsr", "lab", "run", "--data", str(lab_data), "--out", str(out), "--preset", "tiny-random",
        "--methods", "mmsr,bicubic", "--steps", "1", "--seeds", "0,1", "--caption-kinds", "true",
        "--metrics", "psnr,lr_psnr", "--no-report",
    ]  # fmt: skip
    env = os.environ | {
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(out / "results.csv")
    assert len(rows) == len({r["id"] for r in rows}) == 2 * 2 * 2
    assert {r["process"] for r in rows} == {"0", "1"}
    assert not list((out / "shards").glob("*.csv"))


# -- round 2: ids, links, symlinks, viewing, limits ---------------------------------------------------

HOSTILE = ["x.b.png", "x_b.png", "a/b.png", "a_b.png", "A.png", "a.png", "![i](..%2fapp.py).png", "<b>&amp;`$x$`.png"]


def assert_links_inside(folder: Path) -> None:
    """Every link and image of report.md and every src/href of report.html is a file inside ``folder``."""
    import re

    from mmsr.lab.render import link_target

    markdown = (folder / "report.md").read_text()
    targets = re.findall(r"(?<!\\)\]\(([^)]*)\)", markdown)
    targets += re.findall(r"(?:src|href)=\"([^\"]*)\"", (folder / "report.html").read_text())
    assert all(link_target(folder, t) is not None for t in targets), targets


def test_output_folders_are_injective_and_a_clash_is_an_error():
    from mmsr.lab.run import Job, _check_outputs_distinct, output_folders

    names = output_folders(HOSTILE)
    assert len({n.casefold() for n in names.values()}) == len(HOSTILE)
    assert names["x.b.png"] == "x.b.png" and names["x_b.png"] == "x_b.png"  # the extension is kept
    assert all("/" not in n and not n.startswith(".") for n in names.values())
    hashed = names["a/b.png"]
    with pytest.raises(ValueError, match="share the output folder"):
        output_folders(["a/b.png", hashed])
    one = Job("x.png", "mmsr", Setting(guidance=4.0), 0, "", "x.png")
    with pytest.raises(ValueError, match="two rows would write"):
        _check_outputs_distinct([one, Job("x.png", "mmsr", Setting(guidance=4.0000001), 0, "", "x.png")])


NAMES = st.text(st.sampled_from("ab.-_/\\[]()!<>&#*`|$~ é猫\n"), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(NAMES, min_size=1, max_size=6, unique=True))
def test_ids_and_report_text_from_any_names(ids, tmp_path_factory):
    """Names with markdown/HTML metacharacters, ``..``, slashes, unicode: nothing collides, nothing escapes."""
    import html
    import re

    from mmsr.lab.render import (
        Bullets,
        Figure,
        Paragraph,
        Table,
        escape,
        keep_links_inside,
        render_html,
        render_markdown,
    )
    from mmsr.lab.run import output_folders

    names = output_folders(ids)
    assert len({n.casefold() for n in names.values()}) == len(ids)
    assert all(n not in ("", ".", "..") and "/" not in n and not n.startswith(".") for n in names.values())
    folder = tmp_path_factory.mktemp("report")
    blocks = [
        Paragraph(" ".join(map(escape, ids))),
        Bullets([escape(i) for i in ids]),
        Table(["x"], [[i] for i in ids]),
        Figure("plots/none.png", ids[0]),
    ]
    markdown = render_markdown(blocks)
    kept, images = keep_links_inside(markdown, folder)
    assert images == [] and kept == markdown.replace(f"![{escape(ids[0])}](plots/none.png)", "")
    page = render_html(blocks, "t")
    assert all(" ".join(i.split()) in html.unescape(page) for i in ids)
    tags = set(re.findall(r"</?([a-z!]+)", page))
    assert tags <= {"!doctype", "html", "head", "meta", "title", "style", "body", "p", "ul", "li", "table", "thead",
                    "tbody", "tr", "th", "td", "figure", "img", "figcaption"} and page.count("<img") == 1  # fmt: skip


def _hostile_report(root: Path, outside: Path) -> Path:
    folder = root / "hostile"
    (folder / "plots").mkdir(parents=True)
    (folder / "results.csv").write_text(",".join(COLUMNS) + "\n")
    Image.new("RGB", (8, 8)).save(folder / "plots" / "ok.png")
    (folder / "plots" / "evil.png").symlink_to(outside)
    (folder / "report.md").write_text(
        "![a](../../app.py) ![b](/etc/passwd) ![c](plots/evil.png) ![d](plots/ok.png) [e](../x)\n"
        '<img src="../../app.py"> ![f][r] \\\\![g](../../app.py)\n\n[r]: ../../app.py\n'
    )
    os.utime(folder / "results.csv", (0, 0))
    return folder


def test_report_links_never_leave_the_results_folder(tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    folder = _hostile_report(tmp_path / "lab", outside)
    markdown, images = load_report(folder)
    assert images == [(folder / "plots" / "ok.png").resolve()]
    assert "../" not in markdown and "/etc/passwd" not in markdown and "evil" not in markdown and "<img" not in markdown


def test_a_symlink_out_of_the_lab_root_is_not_offered_and_viewing_never_writes(lab_data, tmp_path):
    from mmsr.lab.report import results_folders

    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    config = RunConfig(data=lab_data, out=elsewhere, methods=["bicubic"], metrics=["psnr"], caption_kinds=["true"])
    run_lab(config, methods=build_methods(["bicubic"], preset="tiny-random", checkpoint=None, device="cpu", steps=1))
    (root / "inside").mkdir(parents=True)
    (root / "escape").symlink_to(elsewhere)
    for name in ("results.csv", "run.json"):
        (root / "inside" / name).write_bytes((elsewhere / name).read_bytes())
    (root / "alias").symlink_to(root / "inside")
    assert set(results_folders(root)) == {"inside", "alias"}
    before = sorted(p.name for p in (root / "inside").iterdir())
    with pytest.raises(ValueError, match="lab report") as refused:
        load_report(root / "inside")  # no report and no scratch folder: say so, write nothing
    assert str(tmp_path) not in str(refused.value)
    markdown, images = load_report(root / "inside", scratch=tmp_path / "scratch")  # no images/ here either
    assert sorted(p.name for p in (root / "inside").iterdir()) == before
    assert "missing" in markdown and all(p.is_relative_to(tmp_path / "scratch") for p in images)
    assert_links_inside(tmp_path / "scratch")


@pytest.mark.slow
def test_hostile_data_names_land_escaped_and_every_report_link_stays_inside(tmp_path):
    data = tmp_path / "![a](" / "abs" / "app.py)"
    data.mkdir(parents=True)
    for i, name in enumerate(["x.b.png", "x_b.png", "![i](..%2f..%2fapp.py).png", "<img src=x>$y$.png"]):
        Image.fromarray(data_image(i)).save(data / name)
    out = tmp_path / "results"
    config = RunConfig(data=data, out=out, methods=["bicubic"], metrics=["psnr"], caption_kinds=["true"], seeds=[0])
    methods = build_methods(config.methods, preset="tiny-random", checkpoint=None, device="cpu", steps=1)
    run_lab(config, methods=methods)
    rows = read_rows(out / "results.csv")
    assert len({r["output"] for r in rows}) == len(rows) == 4 and all((out / r["output"]).is_file() for r in rows)
    assert_links_inside(out)
    markdown, images = load_report(out)
    assert "app.py)" not in markdown.replace("app.py\\)", "") and str(tmp_path) not in markdown
    assert all(p.is_relative_to(out.resolve()) for p in images)


def data_image(i: int):
    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()][i][:128, :128]


def test_limit_zero_small_crops_and_runs_where_nothing_succeeds_are_refused(lab_data, tmp_path, capsys):
    base = [
        "lab",
        "run",
        "--data",
        str(lab_data),
        "--preset",
        "tiny-random",
        "--methods",
        "bicubic",
        "--metrics",
        "psnr",
    ]
    for flags in (["--limit", "0"], ["--limit", "-1"], ["--crop", "1"]):
        assert cli_run([*base, "--out", str(tmp_path / "o"), *flags]) == 2
        assert "must be at least" in capsys.readouterr().err
    small = tmp_path / "small"
    small.mkdir()
    Image.new("RGB", (16, 16)).save(small / "tiny.png")  # too small for x4: every row fails
    assert cli_run(["lab", "run", "--data", str(small), "--out", str(tmp_path / "s"), *base[4:]]) == 2
    assert "no row succeeded" in capsys.readouterr().err


def test_temperature_sweep_shares_the_upscale_grammar_and_reads_the_old_one(capsys):
    assert parse_temperature_sweeps(["depth=0.5/1/2,seg=2"]) == {"depth": [0.5, 1.0, 2.0], "seg": [2.0]}
    assert capsys.readouterr().err == ""
    assert parse_temperature_sweeps(["depth=0.5,1,2;seg=2"]) == {"depth": [0.5, 1.0, 2.0], "seg": [2.0]}
    assert (
        capsys.readouterr().err.strip()
        == "note: --temperature 'depth=0.5,1,2;seg=2' is deprecated; write --temperature 'depth=0.5/1/2,seg=2'"
    )


def test_seeded_derangement_is_fixed_and_moves_every_image():
    ids = [f"im{i}" for i in range(7)]
    partner = derangement(ids, seed=0)
    assert partner == derangement(ids, seed=0) and sorted(partner.values()) == ids
    assert all(partner[i] != i for i in ids) and partner != derangement(ids)


def test_wrong_context_gives_mmsr_another_images_maps(tiny_pipe, lab_data):
    from mmsr.engine import Engine
    from mmsr.lab.methods import WRONG_CONTEXT, EngineMethod

    method = EngineMethod(Engine(tiny_pipe, "tiny-random"), steps=1)
    own, other = (prepare(n, lab_data / n, "bicubic").lr for n in ("astronaut.png", "coffee.png"))
    setting = Setting(cfg_mode="m-cfg", guidance=4.0, subset=WRONG_CONTEXT)
    kw = {"caption": "a photo", "seed": 0}
    wrong = method.run(own, setting=setting, context=other, **kw).image
    again = method.run(own, setting=setting, context=other, **kw).image
    right = method.run(own, setting=setting, **kw).image
    assert list(again.getdata()) == list(wrong.getdata()) and list(right.getdata()) != list(wrong.getdata())


def test_a_fixed_residual_scale_reaches_every_mmsr_model_and_is_recorded(tiny_pipe, lab_data, tmp_path):
    from mmsr.engine import Engine
    from mmsr.lab.methods import EngineMethod

    config = RunConfig(data=lab_data, out=tmp_path, preset="tiny-random", residual_scale=0.5).validate()
    assert config.invariants()["residual_scale"] == 0.5
    assert "residual_scale" not in replace(config, residual_scale=None).invariants()  # old folders still resume
    with pytest.raises(ValueError, match=r"residual scale must lie in \[0, 1\]"):
        RunConfig(data=lab_data, out=tmp_path, preset="tiny-random", residual_scale=1.5).validate()
    engine = Engine(tiny_pipe, "tiny-random")  # a model without a stage 1: only s = 1 runs
    lr = prepare("astronaut.png", lab_data / "astronaut.png", "bicubic").lr
    setting, kw = Setting(cfg_mode="m-cfg", guidance=4.0, subset="all"), {"caption": "a photo", "seed": 0}
    with pytest.raises(ValueError, match="needs a residual pipeline"):
        EngineMethod(engine, steps=1, residual_scale=0.5).run(lr, setting=setting, **kw)
    one = EngineMethod(engine, steps=1, residual_scale=1.0).run(lr, setting=setting, **kw).image
    default = EngineMethod(engine, steps=1).run(lr, setting=setting, **kw).image
    assert list(one.getdata()) == list(default.getdata())
    methods = build_methods(["text-only-mmsr"], preset="tiny-random", checkpoint=None, device="cpu", steps=1,
                            engine=engine, residual_scale=0.5)  # fmt: skip
    with pytest.raises(ValueError, match="needs a residual pipeline"):
        methods.methods["text-only-mmsr"].run(lr, setting=setting, **kw)


def _label_map(size, label):
    """A VOC id map: the left half ``label``, the right half background."""
    ids = np.zeros((size[1], size[0]), np.uint8)
    ids[:, : size[0] // 2] = label
    return Image.fromarray(ids)


def test_user_maps_follow_the_crop_and_wrong_context_swaps_them(lab_data, tmp_path, tiny_pipe):
    """``--maps seg=DIR``: each image gets its own map, cropped like its HR; the wrong-context row gets
    the other image's. An image without a map says so and falls back to the extractor."""
    from mmsr.engine import Engine
    from mmsr.lab.methods import EngineMethod, MethodSet

    maps = tmp_path / "seg"
    maps.mkdir()
    _label_map((128, 128), 15).save(maps / "astronaut.png")  # 2x the image: resized to it
    _label_map((64, 64), 8).save(maps / "coffee.png")
    item = prepare("astronaut.png", lab_data / "astronaut.png", "bicubic", crop=8, maps={"seg": maps})
    assert item.maps["seg"].size == item.hr.size == (32, 32) and not item.notes
    # the central 32x32 HR crop of a 64x64 map whose left 32 columns are 15: columns 16..31 of it
    assert np.array_equal(np.asarray(item.maps["seg"].convert("L"))[0], [15] * 16 + [0] * 16)

    engine = Engine(tiny_pipe, "tiny-random")
    given, upscale = [], engine.upscale

    def spy(lr, settings, user_maps=None, **kw):
        given.append(user_maps)
        return upscale(lr, settings, user_maps=user_maps, **kw)

    engine.upscale = spy
    methods = MethodSet({"mmsr": EngineMethod(engine, steps=1)}, {}, engine)
    config = RunConfig(
        data=lab_data, out=tmp_path / "out", methods=["mmsr"], preset="tiny-random", steps=1,
        subsets=["all", "wrong-context"], caption_kinds=["true"], metrics=["psnr"], device="cpu",
        maps={"seg": maps},
    )  # fmt: skip
    summary = run_lab(config, methods=methods)
    assert summary.errors == 0 and summary.ran == 4
    labels = [sorted(np.unique(np.asarray(m["seg"].convert("L")))) for m in given]
    # per image: own maps, then the other's (astronaut 15, coffee 8; two images swap with each other)
    assert labels == [[0, 15], [0, 8], [0, 8], [0, 15]]
    assert all(m["seg"].size == (64, 64) for m in given[:1]) and "edges" in given[1]

    (maps / "coffee.png").unlink()
    run_lab(replace(config, out=tmp_path / "out2", subsets=["all"]), methods=methods)
    rows = {r["image"]: r for r in read_rows(tmp_path / "out2" / "results.csv")}
    assert "no seg map for coffee.png" in rows["coffee.png"]["warnings"]
    assert "seg map" not in rows["astronaut.png"]["warnings"]
    with pytest.raises(ValueError, match="'depht' in --maps"):
        RunConfig(data=lab_data, out=tmp_path / "o", maps={"depht": maps}).validate()


def test_the_old_text_only_name_still_works_and_old_rows_keep_their_ids(tmp_path, capsys):
    from mmsr.lab.methods import method_names
    from mmsr.lab.run import Job

    assert method_names(["mmsr", "text-only"]) == ["mmsr", "text-only-mmsr"]
    assert capsys.readouterr().err.strip() == "note: method 'text-only' is deprecated; write 'text-only-mmsr'"
    setting = Setting(cfg_mode="m-cfg", guidance=4.0)
    old_id = Job("a.png", "text-only", setting, 0, "").id
    assert Job("a.png", "text-only-mmsr", setting, 0, "").id == old_id  # an old folder resumes, nothing reruns
    with ShardWriter(tmp_path / "results.csv") as writer:
        writer.write({"id": old_id, "image": "a.png", "method": "text-only", "status": "ok"})
    assert [r["method"] for r in read_rows(tmp_path / "results.csv")] == ["text-only-mmsr"]


def test_output_change_is_measured_from_the_same_jobs_reference(tmp_path):
    """Mean |output - reference output| per group, paired by image, method, seed and caption kind."""
    from mmsr.lab.hallucination import output_change

    rows = []
    for image, shift in (("a.png", 3), ("b.png", 5)):
        for subset, value in (("all", 100), ("-seg", 100 + shift), ("-edges", 100)):
            name = f"{image}_{subset}.png"
            Image.new("RGB", (8, 8), (value,) * 3).save(tmp_path / name)
            rows.append({"image": image, "method": "mmsr", "seed": "0", "caption_kind": "true",
                         "subset": subset, "output": name})  # fmt: skip
    rows.append({**rows[1], "seed": "1"})  # no reference at seed 1: not counted
    change = output_change(rows, tmp_path, lambda r: r["subset"] == "all", lambda r: r["subset"])
    assert change["all"].mean == 0 and change["-edges"].mean == 0
    assert change["-seg"].mean == pytest.approx(4.0) and change["-seg"].n == 2
