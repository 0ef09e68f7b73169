"""Typed TOML configuration: nested tables, tuples, and unknown keys rejected by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimcast.pipeline.config import ConfigError, from_mapping, load_toml, to_dict
from mimcast.pipeline.synthetic import StormCell, SyntheticConfig


def test_toml_fills_nested_dataclasses_and_tuples(tmp_path):
    path = tmp_path / "synth.toml"
    path.write_text(
        "frames = 5\nwind_u = 3\ncell_radius = [2.0, 4.0]\n"
        "[[cells]]\nbirth = 1\nlifetime = 9\ncol = 10\nrow = 12\npeak_rain = 30\nradius = 4\n"
    )
    config = load_toml(SyntheticConfig, path)
    assert config.frames == 5 and config.wind_u == 3.0 and isinstance(config.wind_u, float)
    assert config.cell_radius == (2.0, 4.0)
    assert config.cells == (StormCell(1, 9, 10, 12, 30, 4),)
    assert from_mapping(SyntheticConfig, to_dict(config)) == config


def test_unknown_and_invalid_keys_name_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'colour'.*known keys: .*frames"):
        from_mapping(SyntheticConfig, {"colour": "red"}, where="my.toml")
    path = tmp_path / "bad.toml"
    path.write_text("[[cells]]\nbirth = 1\nlifetime = 2\ncol = 1\nrow = 1\npeak_rain = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*radius"):
        load_toml(SyntheticConfig, path)
    path.write_text("frames = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(SyntheticConfig, path)


def test_site_settings_come_from_the_environment_then_the_site_file(tmp_path, monkeypatch):
    from mimcast.pipeline.defaults import DEFAULT_RUNS, site_settings

    for name in ("CUBE", "INCOMING", "NOWCASTS", "EVALUATION", "RUNS", "CHECKPOINT"):
        monkeypatch.delenv(f"MIMCAST_{name}", raising=False)
    site = tmp_path / "mimcast.toml"
    site.write_text('[paths]\ncube = "/data/cube.zarr"\nnowcasts = "~/nowcasts"\n')
    monkeypatch.setenv("MIMCAST_CONFIG", str(site))
    monkeypatch.setenv("MIMCAST_CUBE", "/fast/cube.zarr")
    settings = site_settings()
    assert settings.cube == "/fast/cube.zarr"  # the environment wins
    assert settings.nowcasts == str(Path.home() / "nowcasts")  # the file, ~ expanded
    assert settings.runs == DEFAULT_RUNS and settings.checkpoint is None  # built-in defaults
    site.write_text('[paths]\ncubes = "/data"\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['cubes'\]"):
        site_settings()
