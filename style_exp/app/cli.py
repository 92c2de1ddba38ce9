"""The command line around a run: quiet start-up, errors in one line, exit codes, signals.

``run.py`` hands its start to :func:`main` and its Hydra task to :func:`run_job`.

Exit codes: 0 done; 2 what was typed is wrong (a config key or value, an input file,
the tracking URI); 1 the run could not be done or failed (tracking store, memory, no
progress, anything unexpected); 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM,
129 SIGHUP), with the best image so far written and the MLflow run KILLED. A sweep
runs every job, then exits with its worst job's code (``callbacks.SweepSummary``).

Errors print as ``error: <what> (<key, file or URI>)`` and at most one ``hint:``
line; ``HYDRA_FULL_ERROR=1`` shows the traceback instead. TensorFlow's start-up lines
(and MLflow's notes) are hidden unless ``STYLE_EXP_VERBOSE=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from style_exp.app import batches
from style_exp.app.parse import parse
from style_exp.app.schema import MLFLOW_HTTP_DEFAULTS, default_tracking_uri
from style_exp.app.sweeps import JobOutcome, Skipped, sweep_tags, swept_values
from style_exp.engine import stopping
from style_exp.engine.stopping import Terminated
from style_exp.spec.errors import Reported
from style_exp.spec.paths import default_cache_dir
from style_exp.spec.runspec import Provenance, RunSpec

if TYPE_CHECKING:  # TensorFlow loads only once a run is checked
    from style_exp.app.execute import Checkpoint
    from style_exp.app.preflight import Plan
    from style_exp.engine.progress import Result
    from style_exp.engine.video import Frame

USAGE, FAILURE = 2, 1
FULL_ERROR = "HYDRA_FULL_ERROR"
VERBOSE = "STYLE_EXP_VERBOSE"
# Set by main() for its jobs (and a launcher's worker processes): print errors briefly.
BRIEF = "STYLE_EXP_BRIEF_ERRORS"
# Each handler is reset after its first signal, so a second one ends the process at once.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"
TRACKING_MODULES = ("mlflow", "sqlalchemy", "sqlite3", "alembic", "requests", "urllib3")
USAGE_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException,
                OmegaConfBaseException)


def main(hydra_main: Callable[[], None]) -> NoReturn:
    """Run the Hydra app with brief errors, quiet start-up and the exit codes above, and
    end the process (see ``_exit``)."""
    _exit(*_outcome(hydra_main))


def serve(hydra_main: Callable[[], None]) -> int:
    """What :func:`main` does, for a process that goes on (the resident worker,
    ``app/worker.py``): the same exit code and last message, the output flushed, and the
    process left running. Hydra clears its global state when an app ends; it is cleared
    here too for one cut short before Hydra's own clean-up was set up (a stop landing
    there), so the next app starts as in a new process."""
    GlobalHydra.instance().clear()
    exit_code, message = _outcome(hydra_main)
    _say(message)
    return exit_code


def _outcome(hydra_main: Callable[[], None]) -> tuple[int, object]:
    """The app's exit code, and what ``sys.exit`` was given (a message to print, or None)."""
    try:
        _run(hydra_main)
    except SystemExit as done:
        code = done.code
    else:
        code = 0
    return code if isinstance(code, int) else 1 if code else 0, code


def _say(message: object) -> None:
    """Print what ``sys.exit("...")`` would have printed, and flush the output streams."""
    if message is not None and not isinstance(message, int):
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()


def _exit(exit_code: int, message: object) -> NoReturn:
    """End the process once everything is written, without the interpreter's teardown.

    After the run, Python would destroy TensorFlow's thousands of modules and objects one
    by one, which took longer than a small run's whole optimisation (README, "Start-up").
    What the interpreter does before its teardown still happens, in its order: the
    threading module's exit hooks (where joblib's loky executor shuts its workers down;
    without it multiprocessing's exit handler waits out their 300 s idle timeout) and the
    join of non-daemon threads, then the exit handlers (MLflow's, logging's); the output
    streams are flushed.
    """
    _say(message)
    threading._shutdown()
    atexit._run_exitfuncs()
    _say(None)
    os._exit(exit_code)


def _run(hydra_main: Callable[[], None]) -> None:
    brief = not _flag(FULL_ERROR)
    quiet_start_up()
    if brief:
        os.environ[BRIEF] = "1"
        os.environ[FULL_ERROR] = "1"  # Hydra re-raises, rather than printing a traceback
    stopping.quiet_lost_stops()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    try:
        sys.argv = batches.expand(sys.argv)  # content=GLOB: one job per photo
        hydra_main()
    except KeyboardInterrupt as stop:  # before any job started
        print(f"stopped by {_signal_name(stop)}", file=sys.stderr)
        sys.exit(128 + _signal_number(stop))
    except Exception as error:
        if not brief:
            raise
        report(error)
        sys.exit(exit_code(error))


def quiet_start_up() -> None:
    """TensorFlow's and MLflow's start-up notes off (unless STYLE_EXP_VERBOSE=1), and
    MLflow's requests bounded: for every command that runs or reads runs."""
    if not _flag(VERBOSE):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no notes on store creation
        # TensorFlow's Python notes, e.g. that a tiled run traced its edge tiles' shapes
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _stop(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
    stopping.signalled(signum)


def run_job(cfg: DictConfig) -> JobOutcome | None:
    """Hydra's task: parse, check, run, and say in one line what came of it.

    A job of a sweep records how it ended in its directory (``sweeps.JobOutcome``) and
    returns it (a search's sweeper reads the run's metrics from it); a failed one
    returns, so Hydra goes on with the other jobs and the sweep's summary
    (``callbacks.SweepSummary``) lists it and ends the sweep with its exit code. A
    search's trial (``search.trial``) reports its checkpoints to its study, whose pruner
    may stop it early (``study.TrialJudge``).
    """
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = tuple(hydra_cfg.overrides.task)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    tags: dict[str, str] = {}

    def outcome(status: str, code: int = 0, error: str = "",
                metrics: dict[str, float] | None = None) -> JobOutcome | None:
        if not sweep:
            return None
        # named by its swept values, as its run is
        swept = tuple(f"{key}={value}" for key, value in swept_values(tags).items())
        done = JobOutcome(hydra_cfg.job.num, swept or overrides, status, code, error,
                          dict(metrics or {}))
        done.write(output_dir)
        return done

    try:
        if sweep:
            tags = sweep_tags(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, list(overrides))
        spec = parse(cfg, overrides)
        judge = None
        if sweep and spec.search.is_trial:
            from style_exp.app.study import TrialJudge

            judge = TrialJudge.open(spec.search, spec.tracking.uri)
            tags = {**tags, **judge.tags()}
        # the run prints its name, output and dashboard link
        done = execute_checked(spec, output_dir, Provenance(overrides, tags), judge)
    except (KeyboardInterrupt, Exception) as error:
        stop = stopping.as_stop(error)
        if stop is not None:
            line = stopped_line(error if isinstance(error, KeyboardInterrupt) else stop,
                                output_dir)
            print(line, file=sys.stderr)
            outcome("killed", 128 + _signal_number(stop), line)
            sys.exit(128 + _signal_number(stop))  # a stop ends a whole sweep, as Ctrl-C does
        if not _flag(BRIEF):
            raise
        uri = cfg.tracking.uri or default_tracking_uri()
        report(error, uri)
        what, where, _ = describe(error, uri)
        failed = outcome("failed", exit_code(error), f"{what} ({where})" if where else what)
        if not sweep:
            sys.exit(exit_code(error))
        return failed
    if isinstance(done, Skipped):
        return outcome("skipped")
    metrics = getattr(done, "metrics", {})
    return outcome("pruned" if judge is not None and judge.pruned else "finished",
                   metrics=metrics)


def execute_checked(spec: RunSpec, output_dir: Path, provenance: Provenance,
                    on_checkpoint: Checkpoint | None = None) -> Result | list[Frame] | Skipped:
    """Check everything that can be checked in a blink, then load TensorFlow (quietly) and
    execute the plan: what ``run.py``'s jobs and ``style_exp.reproduce`` both do. A job of
    a resumed sweep (``sweep.resume``) that the sweep has FINISHED is skipped first."""
    from style_exp.app import preflight
    from style_exp.engine import memory

    plan = preflight.check(spec)
    if plan.retried:
        print(f"note: {plan.retried}", file=sys.stderr, flush=True)
    skipped = _finished_before(plan, provenance)
    if skipped is not None:
        return skipped
    if plan.tiled:
        memory.configure_for_tiles()  # only takes full effect before TensorFlow loads
    os.environ["TF_XLA_FLAGS"] = with_xla_cache(os.environ.get("TF_XLA_FLAGS", ""))
    with _quiet_native_output():
        import tensorflow  # noqa: F401  (loaded here so its start-up lines can be hidden)
    from style_exp.app.execute import execute

    return execute(plan, output_dir, provenance, on_checkpoint)


def _finished_before(plan: Plan, provenance: Provenance) -> Skipped | None:
    """A resumed sweep's job that the sweep has FINISHED already (``sweep.resume``)."""
    spec = plan.spec
    if not spec.resume or "sweep_id" not in provenance.tags:
        return None
    from style_exp.app.labels import run_name
    from style_exp.app.tracking import finished_run

    earlier = finished_run(spec.tracking.uri, spec.tracking.experiment,
                           provenance.tags["sweep_id"], plan.key)
    if earlier is None:
        return None
    name = run_name(spec.inputs, swept_values(provenance.tags))
    print(f"Run '{name}' skipped: its sweep has it finished already (MLflow run {earlier}; "
          "sweep.resume)", flush=True)
    return Skipped(earlier)


def with_xla_cache(flags: str) -> str:
    """``TF_XLA_FLAGS`` with XLA's persistent cache in the project's cache folder (unless
    the flags name one): the programs XLA compiles (the L-BFGS two-loop, ``loop.xla``
    steps) are then loaded by later processes instead of compiled again, per image size.
    Measured under load: the two-loop's first call 5.5-7.3 s compiled, 3.3-3.6 s loaded."""
    if XLA_CACHE_FLAG in flags:
        return flags
    return f"{flags} {XLA_CACHE_FLAG}={default_cache_dir() / 'xla'}".strip()


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Hide what native code writes to stderr meanwhile (TensorFlow's absl, oneDNN and CUDA
    lines, which its log level does not reach), unless STYLE_EXP_VERBOSE=1."""
    if _flag(VERBOSE):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def stopped_line(stop: KeyboardInterrupt, output_dir: Path) -> str:
    """What was kept when a run was stopped: the best image, or a clip's finished frames."""
    name = _signal_name(stop)
    if (output_dir / "frames").is_dir():
        return (f"stopped by {name}: finished frames are in {output_dir / 'frames'}; "
                "run again with video.resume=true to go on")
    if (output_dir / "output.png").is_file():
        steps = getattr(getattr(stop, "result", None), "steps", 0)
        return (f"stopped by {name} after step {steps}: best image so far in "
                f"{output_dir / 'output.png'} (MLflow run KILLED)")
    return f"stopped by {name} before the first step; nothing was written"


def report(error: BaseException, tracking_uri: str = "") -> None:
    """``error: <what> (<where>)`` and an optional ``hint:`` line on stderr."""
    what, where, hint = describe(error, tracking_uri)
    print(f"error: {what} ({where})" if where else f"error: {what}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def describe(error: BaseException, tracking_uri: str = "") -> tuple[str, str, str]:
    """What is wrong, where, and a hint, for any error a run can end with."""
    if isinstance(error, Reported):
        return error.what, error.where, error.hint
    if isinstance(error, USAGE_ERRORS):
        return _describe_config_error(error)
    first_line = (str(error).strip().splitlines() or [""])[0]
    if type(error).__module__.split(".")[0] in TRACKING_MODULES and tracking_uri:
        return f"the tracking store failed: {first_line}", tracking_uri, ""
    return (f"{type(error).__name__}: {first_line}", "",
            f"{FULL_ERROR}=1 shows the traceback (also in the MLflow run's error.txt)")


def _describe_config_error(error: Exception) -> tuple[str, str, str]:
    """Hydra's and OmegaConf's composition errors, reduced to their first useful line."""
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    lines = str(error).strip().splitlines()
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        message = str(getattr(cause, "msg", cause)).splitlines()[0]
        return message, cause.full_key, "python run.py --cfg job shows every key and value"
    if isinstance(error, OverrideParseException):
        where = lines[0].split(": ", 1)[-1] if ": " in lines[0] else "the command line"
        return ("cannot parse this override", where,
                "quote values with spaces or non-ASCII characters: 'content=\"my photo.jpg\"'")
    if isinstance(error, MissingConfigException):
        options = [line.strip() for line in lines if line.startswith("\t")
                   and "=" not in line and not line.strip().endswith("_schema")]
        what = lines[0].split(": ", 1)[-1]
        return what, "command line", f"choose one of: {', '.join(options)}" if options else ""
    return lines[0] if lines else type(error).__name__, "command line", ""


def exit_code(error: BaseException) -> int:
    if isinstance(error, Reported):
        return error.exit_code
    return USAGE if isinstance(error, USAGE_ERRORS) else FAILURE


def _signal_number(stop: BaseException) -> int:
    """The signal behind a stop (Ctrl-C unless a Terminated is in its chain)."""
    while stop is not None:
        if isinstance(stop, Terminated):
            return stop.signum
        stop = stop.__cause__ or stop.__context__
    return int(signal.SIGINT)


def _signal_name(stop: BaseException) -> str:
    number = _signal_number(stop)
    return "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
