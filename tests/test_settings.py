"""The settings table: one source of defaults and ranges, strict types, notes that reach the user."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from mmsr.cli import add_arguments
from mmsr.cli import run as cli_run
from mmsr.compare import RECORD_FORMAT, settings_from_record
from mmsr.constants import MODALITIES
from mmsr.settings import MAX_CAPTION_CHARS, SPECS, UpscaleSettings, parse_temperature_sweep, parse_temperatures

CUT = f"kept the first {MAX_CAPTION_CHARS}"


def test_dataclass_defaults_are_the_table():
    s = UpscaleSettings()
    for name, spec in SPECS.items():
        expected = dict.fromkeys(MODALITIES, spec.default) if isinstance(getattr(s, name), dict) else spec.default
        assert getattr(s, name) == expected, name


def test_cli_defaults_and_choices_come_from_the_table():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["in.png", "-o", "out.png"])
    for name in ("caption", "negative_prompt", "cfg_mode", "guidance", "steps", "seed", "strength", "residual_scale"):
        assert getattr(args, name) == SPECS[name].default, name
    assert parser.parse_args(["in.png", "-o", "out.png", "--residual-scale", "0.3"]).residual_scale == 0.3
    cfg = next(a for a in parser._actions if a.dest == "cfg_mode")
    assert tuple(cfg.choices) == SPECS["cfg_mode"].choices


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"seed": 1.5}, "seed must be an integer"),
        ({"steps": 2.7}, "steps must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"guidance": "4"}, "guidance must be a number"),
        ({"guidance": float("nan")}, "guidance must lie in"),
        ({"refine": "../../etc/passwd"}, "refine must be true or false"),
        ({"auto_caption": 1}, "auto caption must be true or false"),
        ({"modalities": {"depth": "yes"}}, "switch of depth must be true or false"),
        ({"modalities": "all"}, "modalities must map"),
        ({"temperatures": {"depth": "0.5"}}, "temperature of depth must be a number"),
        ({"temperatures": {"colour": 1.0}}, "unknown modality"),
        ({"caption": None}, "caption must be text"),
        ({"cfg_mode": "xx"}, "cfg mode must be one of"),
    ],
)
def test_types_are_strict(kw, match):
    with pytest.raises(ValueError, match=match):
        UpscaleSettings(**kw)


def test_integral_floats_are_integers_and_partial_dicts_are_completed():
    s = UpscaleSettings(seed=2.0, steps=3.0, temperatures={"seg": 2}, modalities={"edges": False})
    assert (s.seed, s.steps) == (2, 3) and type(s.seed) is int
    assert s.temperatures == {"depth": 1.0, "seg": 2.0, "edges": 1.0}
    assert s.modalities == {"depth": True, "seg": True, "edges": False}


def test_import_refuses_what_it_cannot_take_literally():
    record = {"format": RECORD_FORMAT, "settings": {"modalities": {"depth": "yes"}}}
    with pytest.raises(ValueError, match="switch of depth"):
        settings_from_record(record)
    with pytest.raises(ValueError, match="settings must be an object"):
        settings_from_record({"format": RECORD_FORMAT, "settings": "m-cfg"})


def test_a_cut_caption_is_a_note_that_travels_with_the_settings():
    s = UpscaleSettings(caption="a cat " * 1000)
    assert len(s.caption) <= MAX_CAPTION_CHARS and any(CUT in n for n in s.notes)
    moved = dataclasses.replace(s, seed=3)  # how compare and the baselines derive settings
    assert moved.notes == s.notes
    assert "notes" not in s.to_dict() and UpscaleSettings.from_dict(s.to_dict()).caption == s.caption
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1.5  # built valid, stays valid


def test_cli_reports_a_cut_caption(tmp_path, astronaut_lr, capsys):
    src = tmp_path / "lr.png"
    astronaut_lr.save(src)
    off = [f"--no-{m}" for m in MODALITIES]
    argv = ["upscale", str(src), "-o", str(tmp_path / "sr.png"), "--preset", "tiny-random", "--steps", "1", *off]
    assert cli_run([*argv, "--caption", "a cat " * 1000]) == 0
    assert f"note: caption was 5999 characters; {CUT}" in capsys.readouterr().err


def test_one_temperature_grammar():
    assert parse_temperatures("depth=0.5,edges=2") == {"depth": 0.5, "edges": 2.0}
    assert parse_temperature_sweep("depth=0.5/1/2,seg=2") == {"depth": [0.5, 1.0, 2.0], "seg": [2.0]}
    assert parse_temperature_sweep("depth=0.5,edges=2") == {"depth": [0.5], "edges": [2.0]}
    with pytest.raises(ValueError, match="one value here"):
        parse_temperatures("depth=0.5/2")
    with pytest.raises(ValueError, match="name=value"):
        parse_temperatures("depth")


def test_unset_guidance_is_the_presets_and_the_result_records_the_number(tiny_pipe, astronaut_lr, monkeypatch):
    import dataclasses

    from mmsr.engine import Engine

    engine = Engine(tiny_pipe, "tiny-random")
    engine.preset = dataclasses.replace(engine.preset, default_guidance=2.5)
    used = []
    call = type(tiny_pipe).__call__
    monkeypatch.setattr(
        type(tiny_pipe), "__call__", lambda self, *a, **k: used.append(k["guidance_scale"]) or call(self, *a, **k)
    )
    unset = engine.upscale(astronaut_lr, UpscaleSettings(auto_caption=False))
    chosen = engine.upscale(astronaut_lr, UpscaleSettings(auto_caption=False, guidance=0.0))
    assert used == [2.5, 0.0]
    assert unset.settings.guidance == 2.5 and chosen.settings.guidance == 0.0  # what a run record replays
