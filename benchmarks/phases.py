"""Where a run's fixed cost goes: every phase from the command to the exit, whole process.

    python -m benchmarks.phases --repeats 5 -- content=photo.jpg style=painting.jpg size=256
    python -m benchmarks.phases --projects ../before . -- size=256     # before / after

Each repeat runs ``python run.py ARGS`` in a fresh process per project, interleaved
(project A, B, A, B, ...) so both see the same load on a shared machine; each project
keeps one MLflow store across its repeats (the first repeat creates it). The child is
this module with ``--child``: it wraps the functions named in :data:`PROBES` as their
modules are imported (nothing is imported early, so import times stay as they are) and
records when each call starts and ends; the parent adds the command's start and the
process's exit. A phase is the time between two of these marks; the table gives each
phase's median over the repeats, per project, in seconds (``-`` where a project does not
have the function). Written to ``benchmarks/results/phases.{md,csv}``.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

from style_exp.app.tables import write_tables

PROJECT = Path(__file__).resolve().parents[1]
EVENTS = "STYLE_EXP_PHASE_EVENTS"
# module -> attributes (``Class.method`` too) timed on every call, looked up where called.
PROBES = {
    "style_exp.app.cli": ["main", "run_job", "parse", "execute_checked"],
    "style_exp.app.preflight": ["check"],
    "style_exp.app.execute": ["execute", "reap", "prepare", "reproduction_record",
                              "_log_inputs", "stylize_scales", "_write_result", "log_image"],
    "style_exp.app.job": ["load_inputs", "load_weights", "build_network", "QualityMeter"],
    "style_exp.engine.quality": ["QualityMeter.__call__"],
    "style_exp.engine.stylize": ["objective"],
    "style_exp.engine.progress": ["Reporter.report"],
}
TIMED_IMPORTS = ("tensorflow", "mlflow", "style_exp.app.execute")
# (phase, from mark, to mark); a mark is "<name>.start|end" ("first"/"last" call of it).
PHASES = [
    ("interpreter and run.py's imports", "command", "main.start"),
    ("Hydra compose", "main.start", "run_job.start"),
    ("parse + preflight", "parse.start", "check.end"),
    ("import tensorflow", "import tensorflow.start", "import tensorflow.end"),
    ("import the run's modules", "import style_exp.app.execute.start",
     "import style_exp.app.execute.end"),
    ("MLflow run start, reap, params, config", "execute.start", "prepare.start"),
    ("weights", "load_weights.start", "load_weights.end"),
    ("network build", "build_network.start", "build_network.end"),
    ("quality meter build", "QualityMeter.start", "QualityMeter.end"),
    ("input copies, reproduce.json, start's quality", "prepare.end", "stylize_scales.start"),
    ("of which the start's quality", "QualityMeter.__call__.start",
     "QualityMeter.__call__.end"),
    ("targets", "objective.start", "objective.end"),
    ("tracing + first step", "objective.end", "Reporter.report.start"),
    ("steps", "Reporter.report.start", "stylize_scales.end"),
    ("final quality + image + artifacts", "stylize_scales.end", "execute.end"),
    ("teardown", "execute.end", "exit"),
    ("whole process", "command", "exit"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--projects", nargs="+", default=[str(PROJECT)],
                        help="checkouts to compare (each runs its own run.py)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help="run.py's arguments (after --)")
    args = parser.parse_args()
    if args.child:
        _child(args.args)
        return
    samples: dict[str, list[dict[str, float]]] = {project: [] for project in args.projects}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for index, project in enumerate(args.projects):
                store = Path(scratch) / f"store-{index}"  # one per project, as a user has
                store.mkdir(exist_ok=True)
                samples[project].append(_measure(Path(project), args.args, store,
                                                 Path(scratch) / f"{repeat}-{index}"))
                print(f"repeat {repeat + 1}/{args.repeats} {project}: "
                      f"{samples[project][-1]['whole process']:.1f} s", flush=True)
    rows = [{"phase": phase, **{project: _median(samples[project], phase)
                                for project in args.projects}}
            for phase, _, _ in PHASES]
    preamble = (f"`python run.py {' '.join(args.args)}`, median of {args.repeats} "
                "interleaved repeats, seconds")
    _, table = write_tables(rows, PROJECT / "benchmarks" / "results" / "phases", preamble)
    print(table.read_text())


def _measure(project: Path, run_args: list[str], store: Path,
             scratch: Path) -> dict[str, float]:
    """One whole process: its marks turned into phase durations."""
    scratch.mkdir(parents=True)
    events = scratch / "events.jsonl"
    env = {**os.environ, EVENTS: str(events),
           "PYTHONPATH": os.pathsep.join([str(project), str(PROJECT)])}
    command = [sys.executable, "-m", "benchmarks.phases", "--child", "--",
               f"hydra.run.dir={scratch / 'run'}", f"tracking.uri=sqlite:///{store}/mlflow.db",
               "progress=false", *run_args]
    started = time.time()
    subprocess.run(command, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    marks = {"command": started, "exit": time.time()}
    for line in events.read_text().splitlines():
        mark, when = json.loads(line)
        marks.setdefault(mark, when)  # a function's first call marks it
    return {phase: marks[b] - marks[a] for phase, a, b in PHASES if a in marks and b in marks}


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
