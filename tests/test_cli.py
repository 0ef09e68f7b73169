"""The ``mimcast`` command line: help everywhere, one-line user errors, no fake success."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from mimcast.pipeline.cli import EXIT_USAGE, build_parser, main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    exe = [
        sys.executable,
        "-c",
        "import sys; from mimcast.pipeline.cli import main; sys.exit(main())",
    ]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=120)


def test_every_command_has_help(capsys):
    assert {"synth", "ingest", "train", "nowcast", "evaluate", "serve", "demo"} <= set(COMMANDS)
    for command in [None, *COMMANDS]:
        argv = [command, "--help"] if command else ["--help"]
        with pytest.raises(SystemExit) as exit_info:
            main([a for a in argv if a])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: mimcast" in out and "--help" in out


def test_help_and_usage_errors_do_not_import_the_heavy_libraries():
    # what makes 'mimcast --help' or a typo answer in a fraction of a second, not seconds
    probe = (
        "import sys\n"
        "from mimcast.pipeline.cli import main\n"
        "for argv in (['--help'], ['nowcast', '--help'], ['train', 'c.zarr', '--out', 'r', "
        "'--device', 'cpu', '--max-steps', '0'], ['nowcast', 'c.zarr', '--out', 'o', "
        "'--device', 'gpu']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = {'torch', 'xarray', 'dask', 'pandas', 'pysteps', 'prefect'}\n"
        "print('heavy:', sorted(heavy & set(sys.modules)))\n"
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert "must be >= 1" in result.stderr  # the usage errors did happen
    assert "device 'gpu' is not one of auto, cpu, cuda, cuda:N" in result.stderr
    assert result.stdout.strip().endswith("heavy: []"), result.stdout[-500:]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["synth", "OUT", "--frames", "many"], "invalid int value: 'many'"),
        (["synth", "OUT", "--frames", "0"], "frames=0: must be at least 1"),
        (["synth", "OUT", "--size", "4", "300"], "at least 8"),
        (["synth", "OUT", "--start", "yesterday"], "'yesterday' is not an ISO 8601 UTC time"),
        (
            ["synth", "OUT", "--config", "missing.toml"],
            "missing.toml: configuration file not found",
        ),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["ingest", "OUT", "--out", "c.zarr", "--format", "bufr"], "unknown radar format 'bufr'"),
        (["nowcast", "c.zarr", "--out", "OUT", "--min-step-minutes", "-2"], "-2 must be >= 0"),
        (["evaluate", "c.zarr", "--out", "OUT", "--refine", "0"], "--refine: 0 must be >= 1"),
    ],
)
def test_user_error_is_one_line_without_traceback(tmp_path, args, fragment):
    args = [str(tmp_path / a) if a in ("OUT", "missing.toml") else a for a in args]
    result = run_cli(*args)
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "OUT").exists()


def test_bad_config_key_is_named(tmp_path):
    cfg = tmp_path / "synth.toml"
    cfg.write_text("frames = 3\nwindspeed = 12\n")
    result = run_cli("synth", str(tmp_path / "out"), "--config", str(cfg))
    assert result.returncode == EXIT_USAGE
    assert "unknown key(s) 'windspeed'" in result.stderr and str(cfg) in result.stderr


def test_synth_writes_the_requested_archive(tmp_path):
    cfg = tmp_path / "synth.toml"
    cfg.write_text('wind_u = -5.0\nstart = "2023-01-02T03:00:00"\n')
    out = tmp_path / "archive"
    result = run_cli(
        "synth", str(out), "--frames", "3", "--size", "40", "48", "--step-minutes", "10",
        "--seed", "7", "--config", str(cfg), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("*.h5"))
    assert [f.name for f in files] == [
        "synthetic_dbzh_202301020300.h5",
        "synthetic_dbzh_202301020310.h5",
        "synthetic_dbzh_202301020320.h5",
    ]
    with h5py.File(files[0]) as f:
        data = f["dataset1/data1/data"][()]
    assert data.shape == (40, 48) and data.dtype == np.uint8
    assert str(out.resolve()) in result.stdout


def test_every_command_takes_verbose_and_quiet(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "-v, --verbose" in out and "-q, --quiet" in out, command
    assert "Exit status: 0 success, 1 runtime error" in build_parser().format_help()


def test_verbose_tells_the_progress_quiet_only_problems(tmp_path):
    from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube

    cube = synthetic_cube(SyntheticConfig(height=32, width=32, frames=4, seed=1))
    cube.to_zarr(tmp_path / "c.zarr", consolidated=False)
    args = ["nowcast", str(tmp_path / "c.zarr"), "--method", "persistence", "--out"]
    loud = run_cli(*args, str(tmp_path / "a"), "-v")
    assert loud.returncode == 0, loud.stderr
    said = loud.stderr.splitlines()
    assert "mimcast nowcast: loading persistence" in said
    assert any(line.startswith("mimcast nowcast: persistence: 12 lead steps from") for line in said)
    quiet = run_cli(*args, str(tmp_path / "b"), "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""  # not on a terminal: no bars either
    both = run_cli(*args, str(tmp_path / "c"), "-q", "-v")
    assert both.returncode == EXIT_USAGE and "not allowed with argument" in both.stderr
