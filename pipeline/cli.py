"""The ``mimcast`` command line.

Each command parses plain arguments and calls one function of the plain application layer
(``pipeline.training``, ``pipeline.nowcast``, ``pipeline.evaluation``, ...), the same
functions the Prefect flows call; imports happen inside the command so that ``mimcast
--help`` stays fast. Only ``serve`` and ``demo``, which are Prefect by nature, import
``mimcast.flows``. Option defaults come from ``pipeline.defaults``, as the flows' do.

Every failure is one line on stderr, ``mimcast <command>: error: ...``, with no traceback
(``MIMCAST_DEBUG=1`` shows it), and the exit status says which kind it was:

====  =====================================================================================
0     success
1     runtime error: the data, the files or the machine failed (missing or broken cube,
      unreadable input, disk full, no valid input pixel, another ingest holds the cube)
2     usage error: the command line or a configuration file it names is wrong
4     partial: the command finished but skipped some input (ingest: see its report)
130   interrupted (Ctrl-C)
====  =====================================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

EXIT_RUNTIME = 1  # the data, the files or the machine failed
EXIT_USAGE = 2  # the command line (or a configuration file it names) is wrong
EXIT_PARTIAL = 4  # the command finished, but skipped some input (see its report)
EXIT_INTERRUPTED = 130
EXIT_CODES = (
    f"Exit status: 0 success, {EXIT_RUNTIME} runtime error (data, files, machine), "
    f"{EXIT_USAGE} usage error (command line or configuration), {EXIT_PARTIAL} partial "
    f"(some input skipped), {EXIT_INTERRUPTED} interrupted."
)


class UsageError(ValueError):
    """The command line asks for something impossible; exit status 2."""


@contextmanager
def _as_usage() -> Iterator[None]:
    """Turn a ``ValueError`` raised while building options from arguments into a usage error."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from err


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars: on a terminal by default, always with -v, never with -q."""
    return not args.quiet and (args.verbose > 0 or sys.stderr.isatty())


class _Formatter(logging.Formatter):
    """``mimcast CMD: message`` for progress, ``mimcast CMD: warning: message`` above it."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        message = printable(record.getMessage())
        if record.levelno >= logging.WARNING:
            return f"mimcast {self.command}: {record.levelname.lower()}: {message}"
        return f"mimcast {self.command}: {message}"


def _setup_logging(args: argparse.Namespace) -> logging.Handler:
    """Route mimcast's log (and Python warnings, each once) to stderr at the chosen level."""
    if args.verbose >= 2:
        level = logging.DEBUG
    elif args.verbose == 1 or (not args.quiet and sys.stderr.isatty()):
        level = logging.INFO
    else:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(args.command))
    logging.captureWarnings(True)
    for name in ("mimcast", "py.warnings"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return handler


def printable(text: str) -> str:
    """Escape control characters (newlines in file names ...) so one message stays one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, with a pointer to ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _cmd_synth(args: argparse.Namespace) -> int:
    from mimcast.pipeline.config import load_toml
    from mimcast.pipeline.synthetic import SyntheticConfig, write_archive

    base = load_toml(SyntheticConfig, args.config) if args.config else SyntheticConfig()
    changes = {
        "frames": args.frames,
        "height": args.size[0] if args.size else None,
        "width": args.size[1] if args.size else None,
        "step_minutes": args.step_minutes,
        "seed": args.seed,
        "start": args.start,
    }
    with _as_usage():
        config = dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
    paths = write_archive(config, args.out_dir, progress=_progress(args))
    print(f"wrote {len(paths)} ODIM_H5 files to {Path(args.out_dir).resolve()}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from mimcast.pipeline.ingest import IngestOptions, ingest, report_path
    from mimcast.pipeline.readers import ZR, get_reader

    with _as_usage():
        if args.format != "auto":
            get_reader(args.format)  # an unknown name fails here, listing the known ones
        options = IngestOptions(
            format=args.format,
            zr=ZR(args.zr[0], args.zr[1]),
            step_minutes=args.step_minutes,
            crop=tuple(args.crop) if args.crop else None,
            coarsen=args.coarsen,
            scheduler=args.scheduler,
            max_gap_minutes=args.max_gap_minutes,
            wait_s=args.wait,
        )
    report = ingest(args.paths, args.out, options, progress=_progress(args))
    thinned = (f"{len(report.thinned)} thinned to {report.step_minutes}-minute steps, "
               if report.thinned else "")  # fmt: skip
    print(
        f"{report.status}: {report.new_frames} new frames, {report.filled_gaps} gaps filled, "
        f"{report.unchanged} unchanged, {len(report.skipped)} skipped, {thinned}"
        f"{len(report.duplicates)} duplicates, {len(report.conflicts)} conflicts, "
        f"{len(report.gaps)} gaps in {report.time_range[0]} .. {report.time_range[-1]}"
    )
    for item in report.skipped + report.conflicts:
        print(f"  skipped {printable(item['file'])}: {printable(item['reason'])}",
              file=sys.stderr)  # fmt: skip
    if report.ignored:
        print(f"  ignored {len(report.ignored)} sidecar file(s) (listed in the report)",
              file=sys.stderr)  # fmt: skip
    print(f"cube: {Path(args.out).resolve()}  report: {report_path(args.out).resolve()}")
    return 0 if report.complete else EXIT_PARTIAL


def _refine(text: str) -> int | None:
    """``--refine``: a whole number >= 1, or ``auto`` (None)."""
    return None if text == "auto" else _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def _device(text: str) -> str:
    """A device name this machine has (checked before any work starts)."""
    from mimcast.models.device import check_device_name, resolve_device

    try:
        name = check_device_name(text)
        if name.startswith("cuda"):  # auto and cpu exist everywhere: no torch import for them
            resolve_device(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def _iso_time(text: str) -> str:
    from mimcast.pipeline.cube import parse_time

    try:
        parse_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _reference_time(text: str) -> str:
    return text if text == "latest" else _iso_time(text)


def _cmd_train(args: argparse.Namespace) -> int:
    from mimcast.pipeline.training import load_run_config, run_training

    config = load_run_config(args.config, max_steps=args.max_steps, device=args.device,
                             select=args.select, init=args.init)  # fmt: skip
    result = run_training(args.cubes, args.out, config, progress=_progress(args),
                          deadline_s=args.deadline_s)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        best = f"{result.best_val_mse:.2f} dBZ²" if result.best_val_mse is not None else "n/a"
        scores, select = result.best_scores or {}, config.train.select
        at = f" at step {int(scores['step'])}" if "step" in scores else ""
        chosen = ""
        if select != "val_mse":
            value = f" {scores[select]:.3f}" if select in scores else ""
            chosen = f" (best chosen on validation {select}{value})"
        print(f"trained to step {result.step}; best validation MSE {best}{at}{chosen}")
        if result.stopped:
            print(f"stopped at the deadline ({args.deadline_s:g} s) before step "
                  f"{config.train.max_steps}: run the same command to go on")  # fmt: skip
        print(f"checkpoints: {result.best}  {result.last}")
        print(f"metrics: {result.metrics}  curves: {result.curves}")
    return 0


def _cmd_average(args: argparse.Namespace) -> int:
    from mimcast.models.checkpoint import read_header
    from mimcast.models.train import average_kept

    run = Path(args.run)
    if not run.is_dir():
        raise UsageError(f"{run}: not a run directory")
    start = args.from_step
    if start is None:  # the last 40 % of the run's schedule, as measured (model card)
        try:
            train = json.loads((run / "run_config.json").read_text())["train"]
            max_steps = train["max_steps"]
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f"{run}: no run_config.json with [train] max_steps to place "
                             f"--from by ({err}); give --from STEP") from err  # fmt: skip
        # a run that continued a trained model (init) is all tail: every step it kept
        start = 1 if train.get("init") else math.ceil(0.6 * max_steps)
    try:
        path = average_kept(run, start, args.out)
    except ValueError as err:
        raise UsageError(str(err)) from err
    steps = read_header(path)[3]["averaged_steps"]
    print(f"averaged steps {', '.join(map(str, steps))}: {path}")
    return 0


def _postprocess(args: argparse.Namespace) -> str | None:
    """``--postprocess``: None for the checkpoint's default."""
    return None if args.postprocess == "default" else args.postprocess


def _cmd_nowcast(args: argparse.Namespace) -> int:
    from mimcast.pipeline.nowcast import run_nowcast

    out = run_nowcast(
        args.cube, args.out, method=args.method, checkpoint=args.checkpoint,
        postprocess=_postprocess(args), time=args.time,
        plot=args.plot, leads=tuple(args.leads), source=args.source, device=args.device,
        steps=args.steps, geotiff=args.geotiff, min_step_minutes=args.min_step_minutes,
        refine=args.refine,
    )  # fmt: skip
    print(f"{out.method} nowcast from {out.reference_time} UTC: {out.netcdf.resolve()}")
    for png in out.pngs:
        print(f"map: {png.resolve()}")
    if out.animation:
        print(f"animation: {out.animation.resolve()}")
    for tif in out.geotiffs:
        print(f"geotiff: {tif.resolve()}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mimcast.pipeline.evaluation import run_evaluate

    out = run_evaluate(
        args.cube, args.out, methods=tuple(args.methods), checkpoint=args.checkpoint,
        postprocess=_postprocess(args), start=args.start, end=args.end, every=args.every,
        leads=args.steps, scheduler=args.scheduler, device=args.device, progress=_progress(args),
        min_step_minutes=args.min_step_minutes, refine=args.refine,
    )  # fmt: skip
    from mimcast.pipeline.significance import verdict_lines

    print(f"{out.n_forecasts} forecasts scored per method")
    for line in verdict_lines(out.differences):  # 95 % intervals from resampled refs
        print(line)
    print(f"scores: {out.scores_csv.resolve()}")
    print(f"report: {out.report.resolve()}")
    for fig in out.figures:
        print(f"figure: {fig.resolve()}")
    return 0


def _cmd_loao(args: argparse.Namespace) -> int:
    from mimcast.pipeline import loao
    from mimcast.pipeline.training import load_run_config

    config = load_run_config(args.config, max_steps=args.max_steps, device=args.device,
                             select=args.select, init=args.init)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = tuple(args.variants)

    def exclusions() -> tuple[str, ...]:  # the default leaves out RMI only where the pack has it
        if args.exclude is not None:
            return tuple(x for x in args.exclude if x != "none")
        return tuple(n for n in ("rmi",) if n in loao.pack_archives(out / "pack.npz"))

    if args.stage == "compare":
        if args.against is None:
            raise UsageError("--stage compare needs --against (an earlier loao DIR, or a folder "
                             "of <archive>.json such as data/loao)")  # fmt: skip
        target = loao.compare(args.cubes, out, Path(args.against))
        print(f"comparison: {target.resolve()}")
        return 0
    if args.only:  # one run, as launched by the train stage for each process
        fold, _, variant = args.only.partition("/")
        names, exclude = [loao.archive_name(c) for c in args.cubes], exclusions()
        loao.train_one(out / "pack.npz", out, config, fold, variant, names, exclude,
                       progress=_progress(args), deadline_s=args.deadline_s)  # fmt: skip
        return 0
    if args.stage in ("pack", "all"):
        print(f"pack: {loao.build(args.cubes, out, config, progress=_progress(args))}")
    if args.stage in ("train", "all"):
        loao.train_all(args.cubes, out, args.config, config, variants=variants,
                       final=not args.no_final, exclude=exclusions(), jobs=args.jobs,
                       deadline_s=args.deadline_s, max_steps=args.max_steps,
                       final_max_steps=args.final_max_steps, progress=_progress(args))  # fmt: skip
    if args.stage in ("evaluate", "all"):
        pooled = loao.evaluate_all(args.cubes, out, variants=variants, max_refs=args.max_refs,
                                   device=args.device or "auto", refine=args.refine,
                                   progress=_progress(args))  # fmt: skip
        loao.summary(out)
        print(f"pooled report: {(pooled / 'report.md').resolve()}")
        print(f"summary: {(out / 'summary.md').resolve()}")
        print(f"per archive: {(out / 'per_archive.csv').resolve()}")
    return 0


def _prefect_setup() -> None:
    """Environment for commands that run flows (before Prefect is imported); the user's wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # never phone home
    # Without PREFECT_API_URL, Prefect starts a temporary server and gives it 20 s to come
    # up: it took 18 s on an idle 2-core machine, and failed the demo on a busy one
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _cmd_serve(args: argparse.Namespace) -> int:
    _prefect_setup()
    from mimcast.flows.serve import serve_all

    if not os.environ.get("MIMCAST_DEBUG"):
        _quiet_prefect_tracebacks()

    from mimcast.pipeline.defaults import site_settings

    site_settings()  # a broken site file fails here, in one line, before anything is served

    def absolute(path):
        return str(Path(path).resolve()) if path else None

    serve_all(
        cube=absolute(args.cube), incoming=absolute(args.incoming),
        out_dir=absolute(args.out), checkpoint=args.checkpoint,
        interval_minutes=None if args.no_schedule else args.interval_minutes,
    )  # fmt: skip
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _prefect_setup()
    from mimcast.flows.demo import demo_flow

    if not os.environ.get("MIMCAST_DEBUG"):
        _quiet_prefect_tracebacks()

    out = demo_flow(out=args.out, frames=args.frames, size=args.size, seed=args.seed,
                    train=args.train, max_steps=args.max_steps, every=args.every)  # fmt: skip
    root = Path(args.out).resolve()
    print("\nmimcast demo finished. Outputs:")
    print(f"  synthetic archive (ODIM_H5): {out['archive']}")
    print(f"  radar cube (Zarr):           {out['cube']}")
    print(f"  checkpoint used:             {out['checkpoint']}")
    print(f"  nowcast (CF-1.8 NetCDF):     {out['netcdf']}")
    for png in out["pngs"]:
        print(f"  map:                         {png}")
    for gif in sorted((root / "nowcasts").glob("*.gif")):
        print(f"  animation:                   {gif}")
    print(f"  skill report:                {out['report']}")
    print(f"  scores:                      {out['scores']}")
    for png in sorted((root / "evaluation").glob("*.png")):
        print(f"  figure:                      {png}")
    return 0


def _add_model_inputs(p: argparse.ArgumentParser) -> None:
    """The arguments every command that runs forecast methods takes."""
    from mimcast.pipeline.defaults import DEFAULT_LEADS, MIN_STEP_MINUTES, POSTPROCESS

    p.add_argument("cube", metavar="CUBE", help="Zarr cube from 'mimcast ingest'")
    p.add_argument("--checkpoint", help="model checkpoint for 'mimnet' (default: the shipped "
                   "one, see data/MODEL_CARD.md)")  # fmt: skip
    p.add_argument("--postprocess", choices=["default", *POSTPROCESS], default="default",
                   help="MIMNet output post-processing: the checkpoint's default, none, pm "
                   "(every lead takes the last observation's value distribution), pm-wet "
                   "(every lead keeps its own rain area; the values inside it take the "
                   "distribution of the observed rain) or pm-advected (as pm-wet, with the "
                   "observed rain moved to each lead along the motion: rain that has left the "
                   "grid no longer counts)")  # fmt: skip
    p.add_argument("--steps", type=_positive_int, metavar="N",
                   help="lead steps to forecast (default: the model's horizon; "
                   f"{DEFAULT_LEADS} for methods without one)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--device", default="auto", type=_device, help="auto, cpu, cuda, cuda:1")
    p.add_argument("--min-step-minutes", type=_non_negative, default=MIN_STEP_MINUTES,
                   metavar="MIN", help="on archives with shorter steps, MIMNet runs on every "
                   "k-th frame so that a model step lasts at least MIN minutes (the leads in "
                   "between are interpolated), and extrapolation and S-PROG estimate their "
                   f"motion on every k-th frame (default {MIN_STEP_MINUTES:g}; 0: every "
                   "frame)")  # fmt: skip
    p.add_argument("--refine", type=_refine, default=None, metavar="K",
                   help="MIMNet runs on a grid K times finer than the cube's (each pixel "
                   "repeated) and its forecast is averaged back to the cube's pixels in linear "
                   "Z; K^2 times the arithmetic (default auto: on cubes coarser than the "
                   "checkpoint's training grids, near those; see data/MODEL_CARD.md)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for ``mimcast`` and all its commands."""
    from importlib.metadata import PackageNotFoundError, version

    from mimcast.pipeline.defaults import (
        EVALUATE_EVERY,
        EVALUATE_METHODS,
        FRAMES,
        INGEST_WAIT_S,
        MAP_LEADS,
        MAX_GAP_MINUTES,
        NOWCAST_METHOD,
        SERVE_INTERVAL_MINUTES,
    )
    from mimcast.pipeline.forecasters import list_forecasters
    from mimcast.pipeline.zr import MARSHALL_PALMER

    try:
        release = version("mimcast")
    except PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        release = "unknown"
    methods = list_forecasters()
    parser = _Parser(
        prog="mimcast",
        description="Radar nowcasting with MIMNet: synthesise, ingest, train, nowcast, "
        "evaluate, and serve it all as Prefect deployments.",
        epilog=EXIT_CODES + " Every failure is one line on stderr; MIMCAST_DEBUG=1 shows the "
        "traceback.",
    )
    parser.add_argument("--version", action="version", version=f"mimcast {release}")
    common = argparse.ArgumentParser(add_help=False)
    talk = common.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="count", default=0,
                      help="say what is happening (progress lines and bars even when not on "
                      "a terminal); -vv for debug detail")  # fmt: skip
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="only warnings and errors; no progress bars")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_parser = sub.add_parser

    def add_parser(name, **kwargs):
        return _add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # every command takes -v/-q
    sub.required = True
    SELECT_HELP = (
        "override [train] select: the validation score that picks best.safetensors, "
        "val_mse (lowest) or csi_<T> (highest); run again on a finished run that "
        "kept its steps (keep_validated), it re-chooses among them"
    )

    p = sub.add_parser(
        "synth",
        help="write a synthetic storm archive (ODIM_H5 composites)",
        description="Write a synthetic storm archive: one ODIM_H5 DBZH composite per time step, "
        "with advection, growing and decaying deforming cells, stratiform rain, speckle and a "
        "radar coverage mask. Deterministic per seed.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the files (created)")
    p.add_argument("--frames", type=int, help="number of time steps (default 24)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="grid rows, columns")
    p.add_argument("--step-minutes", type=int, help="minutes between frames (default 5)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument(
        "--start", help="UTC time of the first frame, ISO 8601 (default 2024-07-01T12:00)"
    )
    p.add_argument("--config", help="TOML file with SyntheticConfig fields; flags override it")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "ingest",
        help="read radar archives into a chunked Zarr cube",
        description="Read radar files (ODIM_H5, CF NetCDF, MRMS GRIB2, RADOLAN, KNMI HDF5, FMI "
        "PGM, MeteoSwiss GIF) into one chunked, compressed Zarr cube of reflectivity (dBZ). "
        "Broken files are listed in the report beside the cube and left untouched; sidecars "
        "(.aux.xml, checksums, READMEs) are ignored. One ingest writes a cube at a time "
        "(others wait, see --wait); an interrupted one is rolled back by the next. " + EXIT_CODES,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or globs")
    p.add_argument(
        "--out", required=True, metavar="CUBE.zarr", help="Zarr store (created or extended)"
    )
    p.add_argument("--format", default="auto", help="reader name or 'auto' (detect by content)")
    p.add_argument(
        "--zr",
        type=_positive,
        nargs=2,
        default=(MARSHALL_PALMER.a, MARSHALL_PALMER.b),
        metavar=("A", "B"),
        help="Z = A R^B for rain rates and accumulations (default Marshall-Palmer, "
        f"{MARSHALL_PALMER.a:g} {MARSHALL_PALMER.b:g})",
    )
    p.add_argument("--step-minutes", type=_positive_int,
                   help="time step (default: inferred); a multiple of the archive's own step "
                        "thins it (4 on 2-minute files keeps every other frame)")  # fmt: skip
    p.add_argument(
        "--crop",
        type=float,
        nargs=4,
        metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
        help="keep pixels inside this box (metres of the grid's projection)",
    )
    p.add_argument("--coarsen", type=_positive_int, default=1,
                   help="block-average factor (linear Z)")  # fmt: skip
    p.add_argument("--max-gap-minutes", type=int, default=MAX_GAP_MINUTES,
                   metavar="MIN", help="fill gaps up to this long with NaN frames; longer "
                   "ones are breaks in the time axis (default %(default)s)")  # fmt: skip
    p.add_argument("--wait", type=_non_negative, default=INGEST_WAIT_S, metavar="SECONDS",
                   help="wait this long for another ingest into the same cube to finish "
                   "(default %(default)s)")  # fmt: skip
    p.add_argument(
        "--scheduler",
        help="dask: threads (default), processes, synchronous, or tcp://HOST:PORT of a running "
        "Dask cluster whose workers decode and write (default: MIMCAST_DASK_ADDRESS if set)",
    )
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser(
        "train",
        help="train MIMNet on one or more cubes",
        description="Train MIMNet on windows cut from Zarr cubes. Writes best/last checkpoints, "
        "a resumable state, metrics.jsonl and training_curves.png into --out; running the "
        "same command again resumes. Under torchrun it trains with DDP.",
    )
    p.add_argument("cubes", nargs="+", metavar="CUBE", help="Zarr cubes from 'mimcast ingest'")
    p.add_argument("--config", help="run configuration TOML ([model], [data], [train]); "
                   "default: the shipped data/train.toml")  # fmt: skip
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--max-steps", type=_positive_int, help="override [train] max_steps")
    p.add_argument("--deadline-s", type=_positive, metavar="SECONDS",
                   help="stop after this long, validated and checkpointed where it is; the "
                   "same command goes on (for sessions or job slots of fixed length)")  # fmt: skip
    p.add_argument("--device", type=_device,
                   help="override [train] device (auto, cpu, cuda, cuda:1)")  # fmt: skip
    p.add_argument("--select", metavar="SCORE", help=SELECT_HELP)
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="override [train] init: start from this checkpoint's weights (e.g. "
                   "fine-tune data/mimnet_real.safetensors on your own archive with the "
                   "[model] and [data] it was trained with); fresh optimiser")  # fmt: skip
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "average",
        help="average the weights of a run's kept steps into one checkpoint",
        description="Average the weights of the steps a run kept at its validations "
        "([train] keep_validated) from --from on into one checkpoint, for nowcast, evaluate "
        "and serve (--checkpoint). On the real-radar recipe the average of the last 40 % of "
        "the schedule scored better on held-out archives than the step chosen on validation "
        "MSE (model card). The average is not validated: its header names the steps and has "
        "no scores.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a run directory of 'mimcast train'")
    p.add_argument("--from", dest="from_step", type=_positive_int, metavar="STEP",
                   help="the first step to average (default: the last 40 %% of the run's "
                   "max_steps, e.g. 1500 of 2500; every kept step of a run started from "
                   "another's weights, [train] init)")  # fmt: skip
    p.add_argument("--out", metavar="FILE", help="the checkpoint to write "
                   "(default RUN_DIR/average.safetensors)")  # fmt: skip
    p.set_defaults(func=_cmd_average)

    p = sub.add_parser(
        "nowcast",
        help="nowcast from a cube with a model or a baseline, write CF NetCDF",
        description="Run a forecast method (MIMNet from a checkpoint by default; "
        "'--method extrapolation' is the operational fallback without a model or a GPU) on "
        "the whole grid of a cube at a reference time and write reflectivity, rain rate and "
        "accumulation per lead time as CF-1.8 NetCDF (nowcast_<source>_<YYYYmmddHHMM>.nc), "
        "optionally with map quicklooks.",
    )
    _add_model_inputs(p)
    p.add_argument("--method", default=NOWCAST_METHOD, choices=methods,
                   help=f"forecast method (default {NOWCAST_METHOD})")  # fmt: skip
    p.add_argument("--time", default="latest", type=_reference_time,
                   help="reference time, ISO 8601 UTC, or latest")  # fmt: skip
    p.add_argument("--plot", action="store_true", help="also write PNG maps and a GIF")
    p.add_argument("--geotiff", action="store_true", help="also write a Cloud-Optimised "
                   "GeoTIFF per lead time (valid time in the name and the tags)")  # fmt: skip
    p.add_argument(
        "--leads",
        type=_positive_int,
        nargs="+",
        default=list(MAP_LEADS),
        metavar="MIN",
        help="lead times (minutes) to map with --plot (default "
        + " ".join(map(str, MAP_LEADS))
        + ")",
    )
    p.add_argument("--source", help="source name in the file name (default: the cube's name)")
    p.set_defaults(func=_cmd_nowcast)

    p = sub.add_parser(
        "evaluate",
        help="hindcast: score forecast methods against each other",
        description="Run forecast methods (default: MIMNet, persistence and pysteps "
        "extrapolation; S-PROG and any registered method on request) at reference times over "
        "a cube, all on the same pixels; write scores.csv, report.md and PNG skill curves and "
        "example maps. Reference times run in parallel with dask.",
    )
    _add_model_inputs(p)
    p.add_argument("--methods", nargs="+", choices=methods, default=list(EVALUATE_METHODS),
                   metavar="METHOD", help=f"methods to score, any of {', '.join(methods)} "
                   f"(default {' '.join(EVALUATE_METHODS)})")  # fmt: skip
    p.add_argument("--start", type=_iso_time, help="first reference time (ISO 8601 UTC)")
    p.add_argument("--end", type=_iso_time, help="last reference time (ISO 8601 UTC)")
    p.add_argument("--every", type=_positive_int, default=EVALUATE_EVERY,
                   help=f"use every N-th reference time (default {EVALUATE_EVERY})")  # fmt: skip
    p.add_argument("--scheduler", help="dask: threads (default), synchronous, or tcp://HOST:PORT "
                   "(default: MIMCAST_DASK_ADDRESS if set)")  # fmt: skip
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "loao",
        help="leave-one-archive-out: train on the others, evaluate on each archive, pool",
        description="For each cube: train models (Lagrangian and Eulerian) on all the other "
        "cubes, then evaluate them on the one left out against persistence, extrapolation "
        "and S-PROG; pool the scores per lead step. Stages: pack, train, evaluate (all by "
        "default); each resumes where it stopped. --jobs trains several runs at once.",
    )
    p.add_argument("cubes", nargs="+", metavar="CUBE", help="Zarr cubes, one per archive")
    p.add_argument("--out", required=True, metavar="DIR", help="working and output directory")
    p.add_argument("--config", help="run configuration TOML (e.g. data/real.toml)")
    p.add_argument("--stage", choices=["pack", "train", "evaluate", "all", "compare"],
                   default="all",
                   help="compare (not part of all): the models scored into DIR against the "
                   "same models in the evaluation --against, on the archives named, into "
                   "DIR/compare/")  # fmt: skip
    p.add_argument(
        "--variants", nargs="+", choices=FRAMES, default=list(FRAMES), help="model frames to train"
    )
    p.add_argument("--against", metavar="EARLIER",
                   help="with --stage compare: an earlier loao DIR, or a folder of "
                   "<archive>.json (data/loao) scored on the same reference times")  # fmt: skip
    p.add_argument("--no-final", action="store_true", help="skip the model to ship")
    p.add_argument("--exclude", nargs="+", metavar="ARCHIVE",
                   help="archives the final model leaves out (default rmi: non-commercial "
                   "terms); 'none' for none")  # fmt: skip
    p.add_argument("--jobs", type=_positive_int, default=1, help="training processes at once")
    p.add_argument("--deadline-s", type=_positive, metavar="SECONDS",
                   help="stop training after this long: each run validates and checkpoints "
                   "where it is, runs not started are left; the same command goes on")  # fmt: skip
    p.add_argument("--max-steps", type=_positive_int, help="override [train] max_steps")
    p.add_argument("--final-max-steps", type=_positive_int, help="max_steps of the final model")
    p.add_argument("--select", metavar="SCORE", help=SELECT_HELP)
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="override [train] init: every run starts from these weights (refused "
                   "for a run that holds out an archive they were trained on)")  # fmt: skip
    p.add_argument("--max-refs", type=_positive_int, default=6,
                   help="reference times per archive (evenly spread; default 6)")  # fmt: skip
    p.add_argument("--device", type=_device,
                   help="override [train] device, and the evaluation device")  # fmt: skip
    p.add_argument("--refine", type=_refine, default=None, metavar="K",
                   help="the models run on grids K times finer (default auto; as for "
                   "evaluate)")  # fmt: skip
    p.add_argument("--only", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_loao)

    p = sub.add_parser(
        "serve",
        help="serve all Prefect deployments from one process",
        description="Register the ingest, nowcast, evaluate and train deployments (all named "
        "'mimcast') with the Prefect API in PREFECT_API_URL and run them: nowcast and ingest "
        "every 5 minutes, evaluate daily, train on demand. Trigger one with e.g. "
        "'prefect deployment run nowcast/mimcast'. Stop with Ctrl-C.",
    )
    p.add_argument("--cube", help="Zarr cube (default: the site settings, MIMCAST_CUBE)")
    p.add_argument("--incoming", help="folder of new radar files (default: MIMCAST_INCOMING)")
    p.add_argument("--out", help="folder for nowcast NetCDF and maps (default: MIMCAST_NOWCASTS)")
    p.add_argument("--checkpoint", help="model checkpoint (default: MIMCAST_CHECKPOINT, else "
                   "the shipped one)")  # fmt: skip
    p.add_argument("--interval-minutes", type=_positive, default=SERVE_INTERVAL_MINUTES,
                   help=f"schedule (default {SERVE_INTERVAL_MINUTES:g})")  # fmt: skip
    p.add_argument("--no-schedule", action="store_true", help="only run when triggered")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "demo",
        help="run the whole job on a synthetic archive",
        description="Synthesise a storm archive, ingest it, nowcast with the shipped "
        "checkpoint (--train trains a small model first), evaluate against persistence and "
        "extrapolation, and write NetCDF, maps, an animation and the skill report. Runs "
        "through the Prefect flows in ephemeral mode (no server needed).",
    )
    p.add_argument("--out", default="data/local/demo", help="output folder")
    p.add_argument("--frames", type=_positive_int, default=96,
                   help="time steps to synthesise (5 min)")  # fmt: skip
    p.add_argument("--size", type=_positive_int, default=192, help="grid side in pixels (1 km)")
    p.add_argument("--seed", type=int, default=7, help="weather seed")
    p.add_argument("--train", action="store_true", help="train a small model first")
    p.add_argument("--max-steps", type=_positive_int, default=120,
                   help="training steps with --train")  # fmt: skip
    p.add_argument("--every", type=_positive_int, default=EVALUATE_EVERY,
                   help="evaluate every N-th reference time")  # fmt: skip
    p.set_defaults(func=_cmd_demo)
    return parser


def _quiet_prefect_tracebacks() -> None:
    """Keep Prefect's log lines but drop the tracebacks it attaches to failed runs."""

    class _NoTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            if isinstance(record.msg, str) and "Traceback (most recent call last)" in record.msg:
                record.msg = record.msg.split("Traceback (most recent call last)")[0].rstrip()
            return True

    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    loggers += [logging.getLogger(n) for n in logging.root.manager.loggerDict if "prefect" in n]
    for logger in loggers:
        for handler in logger.handlers:
            handler.addFilter(_NoTraceback())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mimcast`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    from mimcast.pipeline.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(os.environ.get("MIMCAST_DEBUG"))
    handler = _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"mimcast {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError) as err:
        if debug:
            raise
        print(f"mimcast {args.command}: error: {printable(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        if debug:
            raise
        known = isinstance(err, ValueError | OSError)
        what = printable(err) if known else f"unexpected {type(err).__name__}: {printable(err)}"
        print(f"mimcast {args.command}: error: {what}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        for name in ("mimcast", "py.warnings"):
            logging.getLogger(name).removeHandler(handler)
        logging.captureWarnings(False)
        # Prefect's temporary server may end the process abruptly at exit: flush what we said
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
