"""Side-by-side comparison of a sweep (or a whole experiment), from the MLflow store alone.

    python -m style_exp.compare --experiment NAME [--sweep ID] [--tracking-uri URI] [--out DIR]

Writes a labelled contact sheet of the final images laid out by the swept
parameters (like the seed's Figures 2 and 3), the loss curves overlaid, and a table
of swept values, final losses and timings (Markdown and CSV); logs them to MLflow
as a run tagged ``style_exp.kind=compare`` in the same experiment.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw, ImageFont

from style_exp.config import default_tracking_uri
from style_exp.tables import write_tables

CELL = 192  # px, longest side of each image on the sheet
LABEL_HEIGHT = 18
TIME_METRICS = ("time/total_s", "time/per_iteration_ms")


class CompareError(ValueError):
    """Nothing (or nothing comparable) matched the request."""


@dataclass
class Entry:
    run: Run
    values: dict[str, str]  # swept parameter -> value
    image: np.ndarray


def select_runs(client: MlflowClient, experiment: str, sweep: str | None) -> list[Run]:
    """Finished stylisation runs of the experiment (and sweep), oldest first."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(f"no experiment named {experiment!r} in this tracking store")
    query = "attributes.status = 'FINISHED'"
    if sweep:
        query += f" and tags.sweep_id = '{sweep}'"
    runs = [run for run in client.search_runs([found.experiment_id], query,
                                              order_by=["attributes.start_time ASC"],
                                              max_results=5000)
            if run.data.tags.get("style_exp.kind") != "compare"]
    if not runs:
        raise CompareError(f"no finished runs in experiment {experiment!r}"
                           + (f" with sweep_id {sweep!r}" if sweep else ""))
    return runs


def swept_parameters(runs: list[Run]) -> list[str]:
    """The parameters that vary: the sweep's own tags if present, else differing params."""
    tagged = sorted({key.removeprefix("sweep.") for run in runs for key in run.data.tags
                     if key.startswith("sweep.") and key != "sweep.job"})
    if tagged:
        return tagged
    keys = set().union(*(run.data.params for run in runs))
    return sorted(key for key in keys if len({run.data.params.get(key) for run in runs}) > 1)


def swept_value(run: Run, key: str) -> str:
    return run.data.tags.get(f"sweep.{key}", run.data.params.get(key, "-"))


def load_entries(client: MlflowClient, runs: list[Run], keys: list[str],
                 workdir: Path) -> list[Entry]:
    entries = []
    for run in runs:
        local = client.download_artifacts(run.info.run_id, "output.png", str(workdir))
        with Image.open(local) as image:
            entries.append(Entry(run, {key: swept_value(run, key) for key in keys},
                                 np.asarray(image.convert("RGB"))))
    return entries


def grid_layout(entries: list[Entry], keys: list[str]) -> tuple[list[str], list[str], dict]:
    """Column values (first swept key), row values (the rest combined) and their cells."""
    def column_of(entry: Entry) -> str:
        return entry.values[keys[0]] if keys else ""

    def row_of(entry: Entry) -> str:
        return ", ".join(f"{k}={entry.values[k]}" for k in keys[1:])

    columns = _ordered(column_of(e) for e in entries)
    rows = _ordered(row_of(e) for e in entries)
    cells: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        cells.setdefault((row_of(entry), column_of(entry)), []).append(entry)
    return rows, columns, cells


def _ordered(values) -> list[str]:
    """Distinct values, numerically sorted when they are numbers."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def contact_sheet(entries: list[Entry], keys: list[str]) -> Image.Image:
    """A grid of the final images: columns by the first swept key, rows by the others."""
    rows, columns, cells = grid_layout(entries, keys)
    font = ImageFont.load_default(size=12)
    header = LABEL_HEIGHT if keys else 0
    row_label = 160 if len(keys) > 1 else 0
    sheet = Image.new("RGB", (row_label + CELL * len(columns), header + (CELL + LABEL_HEIGHT)
                              * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, column in enumerate(columns):
        if keys:
            draw.text((row_label + c * CELL + 4, 2), f"{keys[0]}={column}", fill="black",
                      font=font)
    for r, row in enumerate(rows):
        top = header + r * (CELL + LABEL_HEIGHT)
        if row_label:
            draw.text((4, top + CELL // 2), row, fill="black", font=font)
        for c, column in enumerate(columns):
            members = cells.get((row, column))
            if not members:
                continue
            thumbnail = Image.fromarray(members[0].image)
            thumbnail.thumbnail((CELL, CELL))
            sheet.paste(thumbnail, (row_label + c * CELL, top))
            loss = members[0].run.data.metrics.get("loss/total")
            caption = f"loss {loss:.3g}" if loss is not None else members[0].run.info.run_id[:8]
            draw.text((row_label + c * CELL + 4, top + CELL + 2), caption, fill="black", font=font)
    return sheet


def loss_curves(client: MlflowClient, entries: list[Entry], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=100)
    for entry in entries:
        history = client.get_metric_history(entry.run.info.run_id, "loss/total")
        label = ", ".join(f"{k}={v}" for k, v in entry.values.items()) or entry.run.info.run_id[:8]
        axes.plot([m.step for m in history], [m.value for m in history], label=label)
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("total loss")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def summary_rows(entries: list[Entry]) -> list[dict[str, object]]:
    """One row per run: swept values, every loss term any run logged (total first), timings."""
    losses = sorted({name for e in entries for name in e.run.data.metrics
                     if name.startswith("loss/")}, key=lambda name: (name != "loss/total", name))
    return [{"run_id": e.run.info.run_id, **e.values,
             **{m: e.run.data.metrics.get(m, float("nan")) for m in (*losses, *TIME_METRICS)}}
            for e in entries]


def compare(experiment: str, sweep: str | None, tracking_uri: str, out: Path) -> list[Path]:
    """Build and log the comparison; returns the files written."""
    client = MlflowClient(tracking_uri)
    runs = select_runs(client, experiment, sweep)
    keys = swept_parameters(runs)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        entries = load_entries(client, runs, keys, Path(workdir))
    sheet_path = out / "contact_sheet.png"
    contact_sheet(entries, keys).save(sheet_path)
    curves_path = loss_curves(client, entries, out / "loss_curves.png")
    csv_path, md_path = write_tables(summary_rows(entries), out / "summary")
    files = [sheet_path, curves_path, csv_path, md_path]
    mlflow.set_tracking_uri(tracking_uri)
    tags = {"style_exp.kind": "compare", "swept": ",".join(keys),
            **({"sweep_id": sweep} if sweep else {})}
    with mlflow.start_run(experiment_id=client.get_experiment_by_name(experiment).experiment_id,
                          run_name=f"compare-{sweep or experiment}", tags=tags):
        mlflow.log_param("runs", len(entries))
        for path in files:
            mlflow.log_artifact(str(path))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="style_exp")
    parser.add_argument("--sweep", help="a sweep_id tag value (default: the whole experiment)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path("runs/compare") / (args.sweep or args.experiment)
    try:
        files = compare(args.experiment, args.sweep, args.tracking_uri or default_tracking_uri(),
                        out)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

