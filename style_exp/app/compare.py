"""Side-by-side comparison of a sweep (or a whole experiment), from the MLflow store alone.

    python -m style_exp.compare [--sweep ID | --study NAME] [--experiment NAME]
                                [--tracking-uri URI] [--out DIR]

Writes a labelled contact sheet (the inputs on top, then the final images laid out by
the swept parameters like the seed's Figures 2 and 3, each with its quality distances),
the content-vs-style trade-off (each run a labelled point), the Pareto front (dominated
runs greyed, each front run's image; ``pareto.py``), the loss curves overlaid,
and a table of run names, swept values, distances, final losses and timings (Markdown
and CSV); logs them to MLflow as a run tagged ``style_exp.kind=compare``. Every run gets
a cell; a run that cannot be shown is named, with the reason.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw, ImageFont

from style_exp.app.labels import SEPARATOR, swept_text
from style_exp.app.pareto import pareto_plot
from style_exp.app.schema import TrackingConfig, default_tracking_uri
from style_exp.app.sweeps import swept_values
from style_exp.app.tables import write_tables
from style_exp.spec.metrics import CONTENT_DISTANCE, STYLE_DISTANCE, STYLE_SWD

CELL = 192  # px, longest side of each image on the sheet
INPUT_CELL = 128  # px, longest side of each input on the sheet
LINE = 15  # px, one line of text
MARGIN = 6  # px, between an image and its label
ROW_LABEL = 150  # px, the row labels' column when there is more than one row
TIME_METRICS = ("time/total_s", "time/per_iteration_ms")
PHOTO_KEY = "content"  # swept by a batch of photos (``run.py -m 'content=photos/*.jpg'``)


class CompareError(ValueError):
    """Nothing (or nothing comparable) matched the request."""


@dataclass
class Entry:
    """One run on the sheet: its swept values and its final image."""

    run: Run
    values: dict[str, str]  # swept parameter -> value
    image: np.ndarray

    @property
    def name(self) -> str:
        return self.run.info.run_name or self.run.info.run_id[:8]

    @property
    def pair(self) -> str:
        """``stata x dora_maar``: the inputs, as the run's name starts."""
        return self.name.split(SEPARATOR)[0]

    @property
    def label(self) -> str:
        """The swept values, or the run's name when nothing was swept."""
        return swept_text(self.values) or self.name

    @property
    def quality(self) -> dict[str, float]:
        return {key: value for key, value in self.run.data.metrics.items()
                if key.startswith("quality/")}


def select_runs(client: MlflowClient, experiment: str, sweep: str | None,
                study: str | None = None) -> list[Run]:
    """Finished stylisation runs of the experiment (and sweep, or search study), oldest
    first."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(f"no experiment named {experiment!r} in this tracking store")
    query = "attributes.status = 'FINISHED'"
    if sweep:
        query += f" and tags.sweep_id = '{sweep}'"
    if study:
        query += f" and tags.`style_exp.study` = '{study}'"
    runs = [run for run in client.search_runs([found.experiment_id], query,
                                              order_by=["attributes.start_time ASC"],
                                              max_results=5000)
            if run.data.tags.get("style_exp.kind") not in ("compare", "study")]
    if not runs:
        raise CompareError(f"no finished runs in experiment {experiment!r}"
                           + (f" with sweep_id {sweep!r}" if sweep else "")
                           + (f" in study {study!r}" if study else ""))
    return runs


def swept_parameters(runs: list[Run]) -> list[str]:
    """The parameters that vary: the sweep's own tags if present, else differing params."""
    tagged = sorted({key for run in runs for key in swept_values(run.data.tags)})
    if tagged:
        return tagged
    keys = set().union(*(run.data.params for run in runs))
    return sorted(key for key in keys if len({run.data.params.get(key) for run in runs}) > 1)


def swept_value(run: Run, key: str) -> str:
    return run.data.tags.get(f"sweep.{key}", run.data.params.get(key, "-"))


def load_entries(client: MlflowClient, runs: list[Run], keys: list[str],
                 workdir: Path) -> tuple[list[Entry], list[str]]:
    """The runs with their final images, and a line for each run that has none."""
    entries, left_out = [], []
    for run in runs:
        try:
            local = client.download_artifacts(run.info.run_id, "output.png", str(workdir))
        except (MlflowException, OSError) as error:
            left_out.append(f"{run.info.run_name} ({run.info.run_id}): no output.png ({error})")
            continue
        with Image.open(local) as image:
            entries.append(Entry(run, {key: swept_value(run, key) for key in keys},
                                 np.asarray(image.convert("RGB"))))
    return entries, left_out


def load_inputs(client: MlflowClient, entries: list[Entry], workdir: Path
                ) -> tuple[list[tuple[str, Image.Image]], dict[str, Image.Image]]:
    """The photo and paintings of each distinct pair of inputs, labelled, as logged, each
    image once; a batch's photos (``content`` swept) go by their path instead, for rows."""
    inputs, seen, shown, photos = [], set(), set(), {}
    for entry in entries:
        tags = entry.run.data.tags
        key = tuple(sorted((k, v) for k, v in tags.items() if k.startswith("input_sha256.")))
        key = key or (entry.name.split(SEPARATOR)[0],)
        if key in seen:
            continue
        seen.add(key)
        try:
            folder = Path(client.download_artifacts(entry.run.info.run_id, "inputs",
                                                    str(workdir / entry.run.info.run_id)))
        except (MlflowException, OSError):
            continue  # a run logged by something else: its inputs are unknown
        for path in sorted(folder.iterdir(), key=lambda p: (not p.stem.startswith("content"),
                                                              p.stem)):
            digest = tags.get(f"input_sha256.{path.stem}", f"{key}/{path.stem}")
            batch_photo = path.stem == "content" and PHOTO_KEY in entry.values
            if digest in shown and not batch_photo:
                continue
            shown.add(digest)
            with Image.open(path) as image:
                if batch_photo:
                    photos[entry.values[PHOTO_KEY]] = image.convert("RGB")
                else:
                    inputs.append((input_label(path.stem, entry.pair),
                                   image.convert("RGB")))
    return inputs, photos


def input_label(stem: str, pair: str) -> str:
    """``content`` -> ``photo stata``, ``style_1`` -> ``style 2 starry_night``: which input
    an input copy is, named as the run's name names it (``stata x dora_maar+starry_night``)."""
    photo, _, paintings = pair.partition(" x ")
    if stem.startswith("content"):
        return f"photo {photo}".strip()
    index = int(stem.rsplit("_", 1)[-1])
    names = paintings.split("+")
    return f"style {index + 1} {names[index] if index < len(names) else ''}".strip()


def sheet_axes(keys: list[str]) -> tuple[str | None, list[str]]:
    """The key the columns go by, and those the rows go by: the first swept key, then the
    others; a batch's photos each get a row, so a folder of them grows down the sheet."""
    others = [key for key in keys if key != PHOTO_KEY]
    return (others[0] if others else None), [*others[1:], *(set(keys) - set(others))]


def row_text(key: str, value: str) -> str:
    """``seed=1``; a batch's photo by its file name alone."""
    return Path(value).stem if key == PHOTO_KEY else f"{key}={value}"


def grid_layout(entries: list[Entry],
                keys: list[str]) -> tuple[list[str], list[str], dict[tuple[str, str], Entry]]:
    """Column values (see ``sheet_axes``; run names when nothing is swept), row labels (the
    other keys) and each cell's run.

    Runs of different inputs (an experiment's sweeps over several pairs) get a row per
    pair, labelled by the pair; runs with the same values (repeats, or runs of one pair's
    sweeps) never share a cell: the second and later get rows of their own, marked
    ``#2``, ``#3``, ...
    """
    column_key, row_keys = sheet_axes(keys)
    by_pair = PHOTO_KEY not in keys and len({entry.pair for entry in entries}) > 1

    def column_of(entry: Entry) -> str:
        if column_key:
            return entry.values[column_key]
        return "" if row_keys else entry.name

    cells: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        base = ", ".join([entry.pair] * by_pair
                         + [row_text(k, entry.values[k]) for k in row_keys])
        row, repeat = base, 1
        while (row, column_of(entry)) in cells:
            repeat += 1
            row = f"{base} #{repeat}".strip()
        cells[(row, column_of(entry))] = entry
    columns = _ordered(column for _, column in cells)
    rows = _ordered(row for row, _ in cells)
    return rows, columns, cells


def _ordered(values: Iterable[str]) -> list[str]:
    """Distinct values, numerically sorted when they are numbers."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def _thumbnail(image: Image.Image | np.ndarray, side: int) -> Image.Image:
    thumbnail = Image.fromarray(image) if isinstance(image, np.ndarray) else image.copy()
    thumbnail.thumbnail((side, side))
    return thumbnail


def contact_sheet(entries: list[Entry], keys: list[str], inputs: list[tuple[str, Image.Image]],
                  photos: dict[str, Image.Image] | None = None) -> Image.Image:
    """The inputs in a band on top, then a grid of the final images: columns by the first
    swept key, rows by the others (``sheet_axes``); each image with its distances right
    under it. A batch's ``photos`` (by path) sit under their rows' labels."""
    rows, columns, cells = grid_layout(entries, keys)
    column_key = sheet_axes(keys)[0]
    row_photos = {row: (photos or {}).get(entry.values.get(PHOTO_KEY, ""))
                  for (row, _), entry in cells.items()}
    font = ImageFont.load_default(size=12)
    thumbnails = {cell: _thumbnail(entry.image, CELL) for cell, entry in cells.items()}
    row_heights = [max(thumbnails[(row, c)].height for c in columns if (row, c) in cells)
                   + MARGIN + 2 * LINE for row in rows]
    left = ROW_LABEL if any(rows) else 0
    input_thumbnails = [(label, _thumbnail(image, INPUT_CELL)) for label, image in inputs]
    band = (max(t.height for _, t in input_thumbnails) + MARGIN + LINE + MARGIN
            if inputs else 0)
    header = LINE + MARGIN
    width = max(left + CELL * len(columns), (INPUT_CELL + MARGIN) * len(inputs))
    sheet = Image.new("RGB", (width, band + header + sum(row_heights)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, thumbnail) in enumerate(input_thumbnails):
        x = i * (INPUT_CELL + MARGIN)
        sheet.paste(thumbnail, (x, 0))
        draw.text((x + 2, thumbnail.height + 2), label, fill="black", font=font)
    for c, column in enumerate(columns):
        heading = f"{column_key}={column}" if column_key else column
        draw.text((left + c * CELL + 2, band), heading[:30], fill="black", font=font)
    top = band + header
    for row, height in zip(rows, row_heights, strict=True):
        if left:
            draw.text((4, top + 2), row, fill="black", font=font)
            if row_photos.get(row) is not None:
                side = max(1, min(ROW_LABEL - 2 * MARGIN, height - LINE - MARGIN))
                sheet.paste(_thumbnail(row_photos[row], side), (4, top + LINE + 2))
        for c, column in enumerate(columns):
            if (row, column) not in cells:
                continue
            thumbnail, entry = thumbnails[(row, column)], cells[(row, column)]
            sheet.paste(thumbnail, (left + c * CELL, top))
            for n, text in enumerate(_caption(entry)):
                draw.text((left + c * CELL + 2, top + thumbnail.height + 2 + n * LINE), text,
                          fill="black", font=font)
        top += height
    return sheet


def _caption(entry: Entry) -> list[str]:
    """Two short lines: the content and the style distance (lower is closer)."""
    quality = entry.quality
    if not quality:
        return ["no quality figures", "(run predates them)"]
    return [f"content {quality.get(CONTENT_DISTANCE, np.nan):.3f}",
            f"style {quality.get(STYLE_DISTANCE, np.nan):.3f} "
            f"swd {quality.get(STYLE_SWD, np.nan):.3f}"]


def tradeoff_plot(entries: list[Entry], keys: list[str], path: Path) -> Path:
    """Style distance against content distance, each run a labelled point.

    Points are joined in the order of the first swept key, so a ratio sweep draws the
    trade-off curve; down and to the left is better on both.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [e for e in entries if {CONTENT_DISTANCE, STYLE_DISTANCE} <= set(e.quality)]
    rows, columns, cells = grid_layout(measured, keys)
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    for row in rows:
        line = [cells[(row, c)] for c in columns if (row, c) in cells]
        x = [e.quality[CONTENT_DISTANCE] for e in line]
        y = [e.quality[STYLE_DISTANCE] for e in line]
        axes.plot(x, y, "o-" if keys else "o", label=row or None)
        for entry, xi, yi in zip(line, x, y, strict=True):
            axes.annotate(entry.label, (xi, yi), textcoords="offset points", xytext=(5, 4),
                          fontsize=8)
    axes.set_xlabel("content distance (to the photo, relu4_2)")
    axes.set_ylabel("style distance (to the styles' Grams, relu1_1..5_1)")
    axes.set_title("content vs style: lower is closer on each axis")
    axes.grid(True, alpha=0.3)
    if any(rows):
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def loss_curves(client: MlflowClient, entries: list[Entry], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=100)
    for entry in entries:
        history = client.get_metric_history(entry.run.info.run_id, "loss/total")
        axes.plot([m.step for m in history], [m.value for m in history], label=entry.label)
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("total loss (grows with the weights: compare distances instead)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def summary_rows(entries: list[Entry]) -> list[dict[str, object]]:
    """One row per run: name, swept values, distances, every loss term (total first), timings."""
    losses = sorted({name for e in entries for name in e.run.data.metrics
                     if name.startswith("loss/")}, key=lambda name: (name != "loss/total", name))
    measures = (CONTENT_DISTANCE, STYLE_DISTANCE, STYLE_SWD, *losses, *TIME_METRICS)
    return [{"run": e.name, "run_id": e.run.info.run_id, **e.values,
             **{m: e.run.data.metrics.get(m, float("nan")) for m in measures}}
            for e in entries]


def compare(experiment: str, sweep: str | None, tracking_uri: str,
            out: Path, study: str | None = None) -> tuple[list[Path], list[str]]:
    """Build and log the comparison; returns the files written and the runs left out."""
    client = MlflowClient(tracking_uri)
    runs = select_runs(client, experiment, sweep, study)
    keys = swept_parameters(runs)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        entries, left_out = load_entries(client, runs, keys, Path(workdir))
        if not entries:
            raise CompareError("no run has an output.png:\n  " + "\n  ".join(left_out))
        inputs, photos = load_inputs(client, entries, Path(workdir))
        sheet_path = out / "contact_sheet.png"
        contact_sheet(entries, keys, inputs, photos).save(sheet_path)
    unmeasured = [f"{e.name} ({e.run.info.run_id}): no quality figures, not on the trade-off plot"
                  for e in entries if not e.quality]
    left_out += unmeasured
    front = pareto_plot(entries, out / "pareto.png")
    files = [sheet_path, tradeoff_plot(entries, keys, out / "tradeoff.png"),
             *([front] if front else []), loss_curves(client, entries, out / "loss_curves.png"),
             *write_tables(summary_rows(entries), out / "summary",
                           preamble=_preamble(entries, left_out))]
    # Through the client, not MLflow's fluent API: that would set the process-wide tracking
    # URI (and MLFLOW_TRACKING_URI, which child processes inherit) to this store.
    tags = {"style_exp.kind": "compare", "swept": ",".join(keys),
            **({"compared_sweep_id": sweep} if sweep else {}),
            **({"compared_study": study} if study else {})}
    run = client.create_run(client.get_experiment_by_name(experiment).experiment_id,
                            run_name=f"compare{SEPARATOR}{sweep or study or experiment}",
                            tags=tags)
    try:
        client.log_param(run.info.run_id, "runs", len(entries))
        for path in files:
            client.log_artifact(run.info.run_id, str(path))
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id)
    return files, left_out


def _preamble(entries: list[Entry], left_out: list[str]) -> str:
    """The table's heading: how many runs, how to read the distances, who is missing."""
    lines = [f"{len(entries)} runs. Distances are relative (0 = the photo's content, "
             "resp. the styles' Gram matrices, exactly); lower is closer."]
    if left_out:
        lines += ["", "Left out:", *[f"- {line}" for line in left_out]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=TrackingConfig.experiment)
    parser.add_argument("--sweep", help="a sweep_id tag value (default: the whole experiment)")
    parser.add_argument("--study", help="a search's study (its trials across its sweeps)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path("runs/compare") / (args.sweep or args.study or args.experiment)
    try:
        files, left_out = compare(args.experiment, args.sweep,
                                  args.tracking_uri or default_tracking_uri(), out, args.study)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in left_out:
        print(f"left out: {line}", file=sys.stderr)
    for path in files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
