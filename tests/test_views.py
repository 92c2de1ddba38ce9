"""The prepared MLflow views (app/views.py), without a browser: the state has the shape the
UI itself wrote (tests/data: a view saved by hand in MLflow 3.17's UI), it round-trips
through the tag, and the links open it. tests/test_dashboard.py opens one in Chromium."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from style_exp.app import views
from style_exp.app.tracking import experiment_id

SAVED_BY_THE_UI = json.loads(
    (Path(__file__).parent / "data" / "mlflow_3_17_saved_view.json").read_text())
SEARCH = "tags.sweep_id = 'S1'"


def _decode(value: str) -> tuple[dict, dict]:
    """A saved view's envelope and state, read the way the UI reads them."""
    envelope = json.loads(value)
    state = envelope["state"]
    assert state.startswith("deflate;")
    return envelope, json.loads(zlib.decompress(base64.b64decode(state[len("deflate;"):])))


def test_the_tag_is_encoded_as_the_ui_encodes_a_saved_view():
    ui_envelope, _ = _decode(SAVED_BY_THE_UI["value"])
    state = views.view_state(SEARCH, ["loss.style_weight"])
    envelope, decoded = _decode(views.encode_view("sweep S1", state, 1_000))
    assert envelope.keys() == ui_envelope.keys()
    assert (envelope["name"], envelope["createdAt"], envelope["updatedAt"]) == (
        "sweep S1", 1_000, 1_000)
    assert decoded == state
    assert SAVED_BY_THE_UI["key"].startswith(views.VIEW_TAG)


def test_the_state_has_the_fields_the_ui_wrote_for_each_part():
    _, ui_state = _decode(SAVED_BY_THE_UI["value"])
    state = views.view_state(SEARCH, ["loss.style_weight"])
    assert state.keys() == ui_state.keys()
    ui_cards = {card["type"]: card for card in ui_state["compareRunCharts"]
                if not card["isGenerated"] or card["type"] == "LINE"}
    # Beyond the UI's fields: the metrics of a multi-metric line chart, and a section's
    # cards a row and card height (fields the UI writes when they are changed by hand).
    extra = {"LINE": {"selectedMetricKeys"}}
    for card in state["compareRunCharts"]:
        assert card.keys() == ui_cards[card["type"]].keys() | extra.get(card["type"], set())
    ui_section = ui_state["compareRunSections"][0]
    for section in state["compareRunSections"]:
        assert section.keys() == ui_section.keys() | {"columns", "cardHeight"}
    assert type(state["orderByAsc"]) is type(ui_state["orderByAsc"])
    assert ui_state["searchFilter"].startswith("tags.sweep_id = ")


def test_a_sweeps_view_filters_its_runs_and_shows_its_charts_first():
    state = views.view_state(SEARCH, ["loss.style_weight", "init.kind"],
                             ["a" * 30, "b" * 70])
    assert state["searchFilter"] == SEARCH
    assert state["selectedColumns"] == [
        "tags.`sweep.init.kind`", "tags.`sweep.loss.style_weight`",
        "metrics.`quality/content_distance`", "metrics.`quality/style_distance`",
        "metrics.`time/total_s`"]
    assert state["columnWidths"] == {"attributes.`Run Name`": 7 * 70 + 60}
    assert state["columnOrder"] == ["attributes.`Run Name`"]  # widths apply to these only
    assert state["runsHiddenMode"] == "SHOW_ALL"  # not the UI's first 10 runs
    grid, scatter, losses = state["compareRunCharts"]
    assert (grid["type"], grid["imageKeys"], grid["step"]) == ("IMAGE", ["output", "progress"], 0)
    assert scatter["type"] == "SCATTER"
    assert (scatter["xaxis"], scatter["yaxis"]) == (
        {"key": "quality/content_distance", "type": "METRIC"},
        {"key": "quality/style_distance", "type": "METRIC"})
    assert losses["type"] == "LINE" and losses["selectedMetricKeys"][0] == "loss/total"
    sections = [section["uuid"] for section in state["compareRunSections"]]
    assert [card["metricSectionId"] for card in state["compareRunCharts"]] == [
        sections[0], sections[1], sections[1]]
    assert state["isAccordionReordered"]  # the UI's own sections go after these


def test_the_name_column_fits_the_names_within_a_screen():
    assert views.name_width(["x" * 45]) == 7 * 45 + 60
    assert views.name_width(["x"]) == 240
    assert views.name_width(["x" * 500]) == 640
    assert views.name_width([]) == 7 * 40 + 60


def test_links_open_the_view_in_the_chart_view_and_a_run_on_its_image():
    url = views.view_url("http://127.0.0.1:8123/", "3", "sweep-S 1")
    page, _, query = url.partition("?")
    assert page == "http://127.0.0.1:8123/#/experiments/3/runs"
    params = parse_qs(query)
    assert params == {"workflowType": ["machine_learning"], "viewStateShareKey": ["sweep-S 1"],
                      "compareRunsMode": ["CHART"]}
    # No search facet in the link: with one, the UI ignores the saved view.
    assert not params.keys() & {"searchFilter", "orderByKey", "orderByAsc", "startTime",
                                "lifecycleFilter", "modelVersionFilter", "datasetsFilter"}
    assert views.run_image_url("sqlite:///x.db", "3", "abc", "output.png") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc/artifacts/output.png"
        "?workflowType=machine_learning")


@pytest.fixture
def store(tmp_path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, experiment_id(uri, "views")


def test_a_sweeps_view_is_written_to_its_experiment(store):
    uri, experiment = store
    client = MlflowClient(uri)
    for value in (50, 5000):
        run = client.create_run(experiment, run_name=f"t x s · style_weight={value}",
                                tags={"sweep_id": "S1"})
        client.set_terminated(run.info.run_id)
    url = views.sweep_view(uri, experiment, "S1", ["loss.style_weight"])
    assert url == views.view_url(uri, experiment, "sweep-S1")
    envelope, state = _decode(client.get_experiment(experiment).tags[
        "mlflow.sharedViewState.sweep-S1"])
    assert envelope["name"] == "sweep S1"
    assert state == views.view_state(SEARCH, ["loss.style_weight"],
                                     ["t x s · style_weight=5000"])


def test_an_experiments_view_is_written_on_first_use_only(store):
    uri, experiment = store
    client = MlflowClient(uri)
    tag = views.VIEW_TAG + views.EXPERIMENT_VIEW
    assert views.experiment_view(uri, experiment) == views.view_url(
        uri, experiment, views.EXPERIMENT_VIEW)
    state = _decode(client.get_experiment(experiment).tags[tag])[1]
    assert (state["searchFilter"], state["orderByAsc"], state["runsHiddenMode"]) == (
        "", False, "FIRST_20_RUNS")  # all runs, the latest 20 in the charts
    client.set_experiment_tag(experiment, tag, "changed in the UI")
    views.experiment_view(uri, experiment)
    assert client.get_experiment(experiment).tags[tag] == "changed in the UI"


def test_a_store_that_refuses_the_view_gets_the_plain_link_and_one_line(store, monkeypatch,
                                                                        capsys):
    uri, experiment = store

    def refuse(*args, **kwargs):
        raise MlflowException("Permission denied for experiment 1\nmore", "PERMISSION_DENIED")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", refuse)
    url = views.sweep_view(uri, experiment, "S1", ["loss.style_weight"])
    assert "viewStateShareKey" not in url and "searchFilter=tags.sweep_id" in url
    note = capsys.readouterr().out.splitlines()
    assert note == ["note: the prepared view could not be saved, so the link opens the "
                    "plain runs list (Permission denied for experiment 1)"]
