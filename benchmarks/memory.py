"""The memory estimate against the measured peak: is the up-front refusal honest?

    python -m benchmarks.memory --sizes 256 512 1024 [--optimizer lbfgs] [--precision bfloat16]
    python -m benchmarks.memory --sizes 1024 2048 --tiles 512 --optimizer lbfgs \
        --set optimizer.history_size=10

Each size is a real `python run.py` in a fresh process (a few iterations on
stata.jpg in the style of starry_night.jpg from ``$STYLE_EXP_IMAGES``); its peak
resident memory comes from the kernel (``wait4``'s ru_maxrss) and is set against
``style_exp.engine.memory``'s estimate for the same config, which ``run.py`` checks before
it starts. The table goes to stdout and ``runs/benchmarks/memory.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from style_exp.app import preflight
from style_exp.app.parse import parse
from style_exp.app.schema import register_schemas
from style_exp.app.tables import write_tables

PROJECT = Path(__file__).resolve().parents[1]
IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", PROJECT.parent / "shared" / "images"))
MB = 2**20


def measure(overrides: list[str]) -> dict[str, object]:
    """Estimate, then run ``run.py`` with ``overrides`` and read its peak RSS."""
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        spec = parse(compose(config_name="config", overrides=overrides), overrides)
    estimate = preflight.check(spec).peak_bytes
    with tempfile.TemporaryDirectory() as scratch:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT / "run.py"), *overrides, "progress=false",
             f"tracking.uri=sqlite:///{scratch}/mlflow.db", f"hydra.run.dir={scratch}/run"],
            cwd=scratch, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"run.py {' '.join(overrides)} failed (status {status})")
    measured = usage.ru_maxrss * 1024
    return {"size": spec.size, "tiles": spec.tiles, "optimizer": spec.loop.optimizer.name,
            "precision": spec.precision,
            "estimate_mb": round(estimate / MB), "measured_mb": round(measured / MB),
            "error": f"{(estimate - measured) / measured:+.0%}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--tiles", default="0", help="a tile side in px, or auto")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further overrides for every run")
    args = parser.parse_args()
    register_schemas()
    rows = [measure([f"content={IMAGES / 'stata.jpg'}", f"style={IMAGES / 'starry_night.jpg'}",
                     f"size={size}", f"iterations={args.iterations}",
                     f"optimizer={args.optimizer}", f"precision={args.precision}",
                     f"tiles={args.tiles}", *args.set])
            for size in args.sizes]
    _, markdown = write_tables(rows, PROJECT / "runs" / "benchmarks" / "memory")
    print(markdown.read_text())


if __name__ == "__main__":
    main()
