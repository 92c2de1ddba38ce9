"""Prepared MLflow views: a sweep's runs (or an experiment's) ready to judge when opened.

MLflow 3.17's UI restores a whole runs view from an experiment tag: *Views → Save as new
view* writes ``mlflow.sharedViewState.<key>``, and a runs URL with
``viewStateShareKey=<key>`` opens that view (only when the URL has no search facet such
as ``searchFilter``; the filter is part of the state). The tag value, as the UI writes
it (a view saved by hand in Chromium, kept in tests/data/mlflow_3_17_saved_view.json):
a JSON envelope ``{"name", "createdAt", "updatedAt", "state"}`` (ms since
the epoch) whose ``state`` is ``"deflate;"`` + base64 of the zlib-compressed JSON of the
search facets and the UI state (columns, charts, their sections). A saved view is also
listed in the UI's *Views* menu under its name. The chart view itself is chosen by the
URL (``compareRunsMode=CHART``), not by the state.

The UI adds a chart for every metric and image key without one, in sections named by
the key's prefix, after the prepared section (``isAccordionReordered``): the prepared
charts come first, the rest stays reachable below. tests/test_dashboard.py opens such a
view in Chromium: should a later MLflow read the state differently, it fails.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from mlflow.tracking import MlflowClient

from style_exp.app.tracking import OUTPUT_IMAGES, PROGRESS_IMAGES, dashboard_url
from style_exp.spec.metrics import CONTENT_DISTANCE, STYLE_DISTANCE

VIEW_TAG = "mlflow.sharedViewState."  # + key: the experiment tag the UI reads a view from
COMPRESSED = "deflate;"  # the UI's marker of a zlib-compressed, base64 state
TOTAL_TIME = "time/total_s"
LOSS_CURVES = ("loss/total", "loss/content", "loss/style", "loss/tv")
NAME_COLUMN = "attributes.`Run Name`"
# The prepared sections (id, title, cards a row, card height in px): a section's cards
# share one width, so the image grid gets a row of its own, tall enough for two images.
SECTIONS = (("style-exp-images", "Images", 1, 620), ("style-exp-tradeoff", "Trade-off", 2, 420))
EXPERIMENT_VIEW = "style_exp-runs"  # the key of an experiment's view (no filter)


def column(kind: str, key: str) -> str:
    """The UI's id of a runs-table column: ``metrics.`quality/style_distance```."""
    return f"{kind}.`{key}`"


def name_width(names: Iterable[str]) -> int:
    """Pixels for the name column to show the longest name (about 7 px a character at the
    table's font, plus the row's colour dot and padding), within what a screen can spare."""
    longest = max((len(name) for name in names), default=40)
    return min(640, max(240, 7 * longest + 60))


def _card(kind: str, section: int, **fields: Any) -> dict[str, Any]:
    """A chart card as the UI serialises it (its base fields, then the type's own)."""
    return {"uuid": f"{SECTIONS[section][0]}-{kind.lower()}", "type": kind,
            "runsCountToCompare": 10, "metricSectionId": SECTIONS[section][0],
            "deleted": False, "isGenerated": False, **fields}


def review_sections() -> list[dict[str, Any]]:
    """The sections holding the review charts, first of all."""
    return [{"uuid": uuid, "name": name, "display": True, "isReordered": False,
             "deleted": False, "isGenerated": False, "columns": columns, "cardHeight": height}
            for uuid, name, columns, height in SECTIONS]


def review_charts() -> list[dict[str, Any]]:
    """In order: every run's final image with its progress beside it, the content-vs-style
    distance scatter (one point per run), the loss curves (log scale)."""
    return [
        _card("IMAGE", 0, imageKeys=[OUTPUT_IMAGES, PROGRESS_IMAGES], step=0,
              showRunParams=True),
        _card("SCATTER", 1, runsCountToCompare=100,
              xaxis={"key": CONTENT_DISTANCE, "type": "METRIC"},
              yaxis={"key": STYLE_DISTANCE, "type": "METRIC"}),
        _card("LINE", 1, displayName="loss curves", metricKey=LOSS_CURVES[0],
              selectedMetricKeys=list(LOSS_CURVES), lineSmoothness=0, xAxisScaleType="linear",
              scaleType="log", range={}, xAxisKey="step", selectedXAxisMetricKey="",
              yAxisKey="metric", yAxisExpressions=[], ignoreOutliers=False,
              useGlobalXaxisKey=True, useGlobalLineSmoothing=True),
    ]


def view_state(search: str, swept: Sequence[str], names: Iterable[str] = (),
               latest_only: bool = False) -> dict[str, Any]:
    """The runs view to open: the runs ``search`` finds, oldest first, every one shown in
    the charts (``latest_only``: newest first, the latest 20 in the charts, for a whole
    experiment); columns for the swept keys (their ``sweep.<key>`` tags), both distances
    and the time (the *Created* column shows each run's status); the review charts."""
    columns = [column("tags", f"sweep.{key}") for key in sorted(swept)]
    columns += [column("metrics", key) for key in (CONTENT_DISTANCE, STYLE_DISTANCE, TOTAL_TIME)]
    return {
        "searchFilter": search, "orderByKey": "attributes.start_time",
        "orderByAsc": not latest_only, "startTime": "ALL", "lifecycleFilter": "Active",
        "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "columnOrder": [NAME_COLUMN],
        "columnWidths": {NAME_COLUMN: name_width(names)},
        "runsHiddenMode": "FIRST_20_RUNS" if latest_only else "SHOW_ALL",
        "compareRunCharts": review_charts(),
        "compareRunSections": review_sections(),
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": True,
        "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "groupBy": None,
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0,
                                  "selectedXAxisMetricKey": ""},
    }


def encode_view(name: str, state: dict[str, Any], now_ms: int) -> str:
    """The tag value the UI writes for a saved view named ``name``."""
    packed = base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms,
                       "state": COMPRESSED + packed})


def view_url(tracking_uri: str, experiment: str, key: str) -> str:
    """The runs page opening the saved view ``key``, in the chart view."""
    return (f"{dashboard_url(tracking_uri, experiment)}&viewStateShareKey={quote(key)}"
            "&compareRunsMode=CHART")


def run_image_url(tracking_uri: str, experiment: str, run_id: str, artifact: str) -> str:
    """The run's page opened on its result (``output.png``): the *Artifacts* tab shows it.
    (Its *Model metrics* tab puts the image series below every metric chart.)"""
    page, _, query = dashboard_url(tracking_uri, experiment, run_id).partition("?")
    return f"{page}/artifacts/{quote(artifact)}?{query}"


def write_view(tracking_uri: str, experiment: str, key: str, name: str,
               state: dict[str, Any], first_use: bool = False) -> str | None:
    """Saves the view on the experiment (``first_use``: unless it has one by that key) and
    returns its link; None, after one line saying why, when the store refuses (a team
    server's read-only permissions, a SQLite store busy with a parallel job's writes):
    the caller links the plain runs. Whatever the cause, a finished run or sweep does not
    fail for its view."""
    client = MlflowClient(tracking_uri)
    try:
        if not (first_use and VIEW_TAG + key in client.get_experiment(experiment).tags):
            client.set_experiment_tag(experiment, VIEW_TAG + key,
                                      encode_view(name, state, int(1000 * time.time())))
    except Exception as error:
        print(f"note: the prepared view could not be saved, so the link opens the plain "
              f"runs list ({str(error).splitlines()[0][:200]})", flush=True)
        return None
    return view_url(tracking_uri, experiment, key)


def sweep_view(tracking_uri: str, experiment: str, sweep: str, swept: Sequence[str]) -> str:
    """The link to the sweep's prepared view (written, or rewritten when a resumed sweep
    ends), or to its plain filtered runs when it cannot be written."""
    search = f"tags.sweep_id = '{sweep}'"
    runs = MlflowClient(tracking_uri).search_runs([experiment], search, max_results=5000)
    state = view_state(search, swept, (run.info.run_name or "" for run in runs))
    return (write_view(tracking_uri, experiment, f"sweep-{sweep}", f"sweep {sweep}", state)
            or dashboard_url(tracking_uri, experiment, search=search))


def experiment_view(tracking_uri: str, experiment: str) -> str:
    """The link to the experiment's prepared view of all its runs, written on first use."""
    state = view_state("", (), latest_only=True)
    return (write_view(tracking_uri, experiment, EXPERIMENT_VIEW, "all runs", state,
                       first_use=True)
            or dashboard_url(tracking_uri, experiment))
