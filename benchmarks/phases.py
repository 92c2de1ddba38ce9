"""Where a run's fixed cost goes: every phase from the command to the exit, whole process.

    python -m benchmarks.phases --repeats 5 -- content=photo.jpg style=painting.jpg size=256
    python -m benchmarks.phases --projects ../before . -- size=256     # before / after
    python -m benchmarks.phases --job 4 -- -m loss.style_weight=1e3,1e4,1e5,1e6,1e7 ARGS
    python -m benchmarks.phases --worker -- content=photo.jpg style=painting.jpg size=256

Each repeat runs ``python run.py ARGS`` in a fresh process per project, interleaved
(project A, B, A, B, ...) so both see the same load on a shared machine; each column
keeps one MLflow store across its repeats, created before them (a user's store exists:
creating its tables takes a second that no repeat should carry). The child is
this module with ``--child``: it wraps the functions named in :data:`PROBES` as their
modules are imported (nothing is imported early, so import times stay as they are) and
records when each call starts and ends; the parent adds the command's start and the
process's exit. A phase is the time between two of these marks; the table gives each
phase's median over the repeats, per project, in seconds (``-`` where a project does not
have the function). ``--job N`` times the N-th job (from 0) of a sweep instead, from where
the previous job's run ended: what a later job pays besides its steps. Written to
``benchmarks/results/phases.{md,csv}``.

``--worker`` also hands the same command to a resident worker (``style_exp.worker``),
started with the probes installed in it (its events go to the file the handing command's
environment names): columns ``cold``, ``worker, first job`` (the first command in a
worker started for it) and ``worker`` (one worker for all repeats, after a first job
not counted), interleaved. A handed command's first phase is the hand-over.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.abc
import importlib.util
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from style_exp.app.handoff import DIR_ENV, LOG, RECORD, WORKER_ENV
from style_exp.app.tables import write_tables

PROJECT = Path(__file__).resolve().parents[1]
EVENTS = "STYLE_EXP_PHASE_EVENTS"
# module -> attributes (``Class.method`` too) timed on every call, looked up where called.
PROBES = {
    "style_exp.app.cli": ["main", "serve", "run_job", "parse", "execute_checked"],
    "style_exp.app.preflight": ["check"],
    "style_exp.app.execute": ["execute", "reap", "prepare", "reproduction_record",
                              "_log_inputs", "stylize_scales", "_write_result", "log_image",
                              "plot_losses"],
    "style_exp.app.job": ["load_inputs", "load_weights", "build_network"],
    # methods before the class: wrapping the class hides them (a meter built at its first
    # measurement has ``_build``; an older one was built by its constructor)
    "style_exp.engine.quality": ["QualityMeter.__call__", "QualityMeter._build", "QualityMeter"],
    "style_exp.engine.stylize": ["objective"],
    "style_exp.engine.progress": ["Reporter.report"],
}
TIMED_IMPORTS = ("tensorflow", "mlflow", "style_exp.app.execute")
# (phase, from mark, to mark); a mark is "<name>.start|end" (the first call of it), or
# marks separated by "|": the first of them that a process has (cold or handed).
PHASES = [
    ("interpreter and run.py's imports (worker: the hand-over)", "command",
     "main.start|serve.start"),
    ("Hydra compose", "main.start|serve.start", "run_job.start"),
    ("parse + preflight", "parse.start", "check.end"),
    ("import tensorflow", "import tensorflow.start", "import tensorflow.end"),
    ("import the run's modules", "import style_exp.app.execute.start",
     "import style_exp.app.execute.end"),
    ("MLflow run start, reap, params, config", "execute.start", "prepare.start"),
    ("weights", "load_weights.start", "load_weights.end"),
    ("network build", "build_network.start", "build_network.end"),
    ("quality meter build", "QualityMeter._build.start|QualityMeter.start",
     "QualityMeter._build.end|QualityMeter.end"),
    ("input copies, reproduce.json, start's quality", "prepare.end", "stylize_scales.start"),
    ("first quality measurement (the start's; meter built at it: after the steps)",
     "QualityMeter.__call__.start", "QualityMeter.__call__.end"),
    ("targets", "objective.start", "objective.end"),
    ("tracing + first step", "objective.end", "Reporter.report.start"),
    ("steps", "Reporter.report.start", "stylize_scales.end"),
    ("final quality + image + artifacts", "stylize_scales.end", "execute.end"),
    ("teardown", "execute.end", "exit"),
    ("command to the first step", "command", "Reporter.report.start"),
    ("whole process", "command", "exit"),
]
WORKER_COLUMNS = ("cold", "worker, first job", "worker")
# A later job of a sweep (``--job N``, N > 0): from the previous job's end to its own.
PREVIOUS = "previous execute.end"
LATER_PHASES = [
    ("between jobs (last outcome, Hydra's next job)", PREVIOUS, "run_job.start"),
    ("parse + preflight", "run_job.start", "execute.start"),
    ("MLflow run start", "execute.start", "reap.start"),
    ("reap", "reap.start", "reap.end"),
    ("params, config", "reap.end", "prepare.start"),
    ("prepare (inputs, start image, cached network)", "prepare.start", "prepare.end"),
    ("input copies, reproduce.json, start's quality", "prepare.end", "stylize_scales.start"),
    ("first quality measurement (the start's)", "QualityMeter.__call__.start",
     "QualityMeter.__call__.end"),
    ("targets", "objective.start", "objective.end"),
    ("first step (its start's evaluation and line search)", "objective.end",
     "Reporter.report.start"),
    ("steps", "Reporter.report.start", "stylize_scales.end"),
    ("final quality, output image series", "stylize_scales.end", "_write_result.start"),
    ("output.png, loss plot, artifacts, last metrics", "_write_result.start", "execute.end"),
    ("of which the loss plot", "plot_losses.start", "plot_losses.end"),
    ("the job, less its steps", PREVIOUS, "execute.end"),
    ("the job", PREVIOUS, "execute.end"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--projects", nargs="+", default=[str(PROJECT)],
                        help="checkouts to compare (each runs its own run.py)")
    parser.add_argument("--job", type=int, default=0,
                        help="time this job of a sweep (give -m and the swept values in "
                             "ARGS): 0 is the first; a later one's phases start where the "
                             "previous job's run ended")
    parser.add_argument("--worker", action="store_true",
                        help="also hand the command to a resident worker (see above)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help="run.py's arguments (after --)")
    args = parser.parse_args()
    if args.child:
        _child(args.args)
        return
    if args.worker_child:
        _worker_child()
        return
    modes = WORKER_COLUMNS if args.worker else ("cold",)
    columns = [(project, mode) for project in args.projects for mode in modes]
    samples: dict[tuple[str, str], list[dict[str, float]]] = {column: [] for column in columns}
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as kept:
        root = Path(scratch)
        for index, (project, mode) in enumerate(columns):
            _create_store(root / f"store-{index}")
            if mode == "worker":  # one worker for all repeats, its first job not counted
                kept.enter_context(_worker(Path(project), root / f"w{index}"))
                _measure(Path(project), args.args, root / f"store-{index}",
                         root / f"warm-up-{index}", args.job, root / f"w{index}")
        for repeat in range(args.repeats):
            for index, (project, mode) in enumerate(columns):
                with contextlib.ExitStack() as fresh:
                    workers = root / f"w{index}" if mode != "cold" else None
                    if mode == "worker, first job":  # a fresh worker per repeat
                        fresh.enter_context(_worker(Path(project), workers))
                    samples[project, mode].append(_measure(
                        Path(project), args.args, root / f"store-{index}",
                        root / f"{repeat}-{index}", args.job, workers))
                print(f"repeat {repeat + 1}/{args.repeats} {project} {mode}: "
                      f"{samples[project, mode][-1]['whole process']:.1f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    name = {column: column[0] if not args.worker else
            column[1] if len(args.projects) == 1 else " ".join(column) for column in columns}
    rows = [{"phase": phase, **{name[column]: _median(samples[column], phase)
                                for column in columns}}
            for phase, _, _ in (LATER_PHASES if args.job else PHASES)]
    preamble = (f"`python run.py {' '.join(args.args)}`, median of {args.repeats} "
                "interleaved repeats, seconds; load average at the end "
                f"{os.getloadavg()[0]:.1f}")
    _, table = write_tables(rows, PROJECT / "benchmarks" / "results" / "phases", preamble)
    print(table.read_text())


def _env(project: Path, workers: Path | None) -> dict[str, str]:
    """The command's (and its worker's) environment: cold unless ``workers`` is given."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), str(PROJECT)])}
    if workers is None:
        return {**env, WORKER_ENV: "0"}
    return {**env, DIR_ENV: str(workers)}


def _create_store(store: Path) -> None:
    """An empty MLflow store in ``store``, its tables created."""
    from mlflow.tracking import MlflowClient  # here: a child must import it where the run does

    store.mkdir()
    MlflowClient(f"sqlite:///{store}/mlflow.db").search_experiments()


def _measure(project: Path, run_args: list[str], store: Path, scratch: Path,
             job: int = 0, workers: Path | None = None) -> dict[str, float]:
    """One whole process (cold, or handed to the worker in ``workers``): the marks of its
    ``job``-th job turned into phase durations."""
    scratch.mkdir(parents=True)
    store.mkdir(exist_ok=True)
    events = scratch / "events.jsonl"
    events.touch()
    env = {**_env(project, workers), EVENTS: str(events)}
    flags = [arg for arg in run_args if arg.startswith("-")]  # -m before the overrides
    child = ["-m", "benchmarks.phases", "--child", "--"] if workers is None else ["run.py"]
    command = [sys.executable, *child, *flags,
               f"hydra.run.dir={scratch / 'run'}", f"hydra.sweep.dir={scratch / 'sweep'}",
               f"tracking.uri=sqlite:///{store}/mlflow.db",
               "progress=false", *[arg for arg in run_args if arg not in flags]]
    started = time.time()
    subprocess.run(command, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    marks = {"command": started, "exit": time.time()}
    events = [json.loads(line) for line in events.read_text().splitlines()]
    if job:  # from the end of the previous job's run
        ends = [index for index, (mark, _) in enumerate(events) if mark == "execute.end"]
        marks[PREVIOUS] = events[ends[job - 1]][1]
        events = events[ends[job - 1] + 1:]
    for mark, when in events:
        marks.setdefault(mark, when)  # a function's first call (in the job) marks it
    if workers is not None and "serve.start" not in marks:
        raise RuntimeError(f"the command ran cold, not in the worker ({workers})")

    def first(names: str) -> str:
        return next((name for name in names.split("|") if name in marks), names)

    found = [(phase, first(a), first(b)) for phase, a, b in (LATER_PHASES if job else PHASES)]
    phases = {phase: marks[b] - marks[a] for phase, a, b in found if a in marks and b in marks}
    if job and "steps" in phases:
        phases["the job, less its steps"] -= phases["steps"]
    return {**phases, "whole process": marks["exit"] - marks["command"]}


@contextlib.contextmanager
def _worker(project: Path, directory: Path) -> Iterator[None]:
    """A resident worker with the probes in it, serving from ``directory`` meanwhile."""
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / RECORD
    record.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.phases", "--worker-child"],
                               cwd=project, env=_env(project, directory),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not record.exists():  # written once it listens
            if process.poll() is not None:
                raise RuntimeError(f"the worker did not start: {directory / LOG}")
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(timeout=120)


def _worker_child() -> None:
    """A worker whose probes write to the file its current job's environment names."""

    def record(mark: str) -> None:
        if EVENTS in os.environ:
            with open(os.environ[EVENTS], "a") as log:
                log.write(json.dumps([mark, time.time()]) + "\n")

    sys.meta_path.insert(0, _Probes(record))
    from style_exp.app import worker

    worker.main(["serve", "--idle-min", "60"])


def _median(samples: list[dict[str, float]], phase: str) -> float | str:
    values = [sample[phase] for sample in samples if phase in sample]
    return round(statistics.median(values), 3) if values else "-"


def _child(run_args: list[str]) -> None:
    """Run ``run.py`` in this process with the probes installed."""
    log = open(os.environ[EVENTS], "a")  # noqa: SIM115  (open until the process ends)

    def record(mark: str) -> None:  # as it happens: some calls never return (os._exit)
        log.write(json.dumps([mark, time.time()]) + "\n")
        log.flush()

    sys.meta_path.insert(0, _Probes(record))
    sys.argv = ["run.py", *run_args]
    sys.path.insert(0, os.getcwd())
    runpy.run_path("run.py", run_name="__main__")


class _Probes(importlib.abc.MetaPathFinder):
    """Wraps :data:`PROBES` in each module as it finishes loading, and times the loading
    of :data:`TIMED_IMPORTS`."""

    def __init__(self, record) -> None:
        self.record = record

    def find_spec(self, name, path, target=None):
        if name not in PROBES and name not in TIMED_IMPORTS:
            return None
        sys.meta_path.remove(self)  # let the real finders find it
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, probes = spec.loader, self

        class Timed(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                if name in TIMED_IMPORTS:
                    probes.record(f"import {name}.start")
                loader.exec_module(module)
                if name in TIMED_IMPORTS:
                    probes.record(f"import {name}.end")
                for attribute in PROBES.get(name, []):
                    _wrap(module, attribute, probes.record)

        spec.loader = Timed()
        return spec


def _wrap(module, attribute: str, record) -> None:
    owner_name, _, name = attribute.rpartition(".")
    owner = getattr(module, owner_name, None) if owner_name else module
    function = getattr(owner, name, None)
    if function is None:
        return

    @functools.wraps(function)
    def timed(*args, **kwargs):
        record(f"{attribute}.start")
        try:
            return function(*args, **kwargs)
        finally:
            record(f"{attribute}.end")

    setattr(owner, name, timed)


if __name__ == "__main__":
    main()
