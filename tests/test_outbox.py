"""A tracking store that stops answering: records queue on disk, in order, and reach the
store once, when it answers again or through ``python -m style_exp.runs sync``.

Fast: a local store behind a switch that makes every call fail as MLflow's HTTP client
fails against a stopped server. The team server itself: tests/test_cluster.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp.app import outbox as outbox_module
from style_exp.app import runs, tracking
from style_exp.app.journal import ENTRIES, Journal
from style_exp.app.outbox import QUEUE_DIR, Outbox, unreachable

# What MLflow 3.17 raises once its HTTP retries against a stopped server are spent.
REFUSED = ("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with "
           "exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded")


class Switch:
    """An MlflowClient whose store can be switched off: then every call fails as above."""

    def __init__(self, client: MlflowClient):
        self.client, self.down, self.tracking_uri = client, False, client.tracking_uri

    def __getattr__(self, name: str):
        call = getattr(self.client, name)

        def switched(*args, **kwargs):
            if self.down:
                raise MlflowException(REFUSED)
            return call(*args, **kwargs)

        return switched


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A run in a local store, reached through a :class:`Switch`; retries every 50 ms."""
    monkeypatch.setattr(outbox_module, "FIRST_RETRY_S", 0.05)
    monkeypatch.setattr(outbox_module, "LAST_RETRY_S", 0.05)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(tracking.experiment_id(uri, "outbox"))
    switch = Switch(client)
    return client, switch, Outbox(switch, run.info, tmp_path / "run" / QUEUE_DIR, runs.heartbeat)


def record_a_run(box: Outbox, tmp_path: Path, steps: range) -> None:
    """What a run records at each step (metrics with heartbeat, an image) plus tags,
    params and files, as ``execute.py`` does."""
    artifact = tmp_path / "output.png"
    artifact.write_bytes(b"png")
    for step in steps:
        box.log_metrics({"loss/total": 100.0 - step}, step, alive=True)
        box.log_image(np.full((8, 8, 3), step, np.uint8), "progress", step)
    box.set_tag("stage", "first")
    box.set_tag("stage", "last")  # the order decides what stays
    box.log_params({"size": 48})
    box.log_artifact(str(artifact))
    box.log_dict({"seed": 0}, "reproduce.json")


def images(client: MlflowClient, run_id: str) -> list[str]:
    return sorted(info.path for info in client.list_artifacts(run_id, "images"))


def assert_complete(client: MlflowClient, run_id: str, steps: range) -> None:
    run = client.get_run(run_id)
    history = client.get_metric_history(run_id, "loss/total")
    assert [(m.step, m.value) for m in history] == [(s, 100.0 - s) for s in steps]
    assert [path.split("+")[2] for path in images(client, run_id)] == sorted(
        str(s) for s in steps for _ in range(2))  # full size and MLflow's compressed copy
    assert run.data.tags["stage"] == "last" and run.data.params["size"] == "48"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"output.png", "reproduce.json"}
    assert run.info.status == "FINISHED" and "error" not in run.data.tags


def test_the_journal_keeps_order_and_position_and_ignores_a_torn_last_line(tmp_path):
    journal = Journal.create(tmp_path / "q", {"run_id": "r"})
    for index in range(3):
        journal.append({"op": "batch", "n": index})
    with (tmp_path / "q" / ENTRIES).open("a") as handle:
        handle.write('{"op": "batch", "n": 3')  # the process died writing this line
    journal.mark_replayed(2)
    again = Journal(tmp_path / "q")
    assert [entry["n"] for entry in again.entries] == [0, 1, 2]
    assert (again.replayed, again.pending, again.header) == (2, 1, {"run_id": "r"})


def test_what_counts_as_a_store_that_does_not_answer():
    assert unreachable(MlflowException(REFUSED))
    assert unreachable(ConnectionRefusedError())
    assert unreachable(MlflowException("database down", error_code=TEMPORARILY_UNAVAILABLE))
    assert not unreachable(MlflowException("param changed", error_code=INVALID_PARAMETER_VALUE))
    assert not unreachable(ValueError("a bug"))


def test_records_queue_while_the_store_is_away_and_reach_it_in_order(store, tmp_path, capsys):
    client, switch, box = store
    record_a_run(box, tmp_path, range(0, 2))  # sent at once
    assert not (tmp_path / "run" / QUEUE_DIR).exists()
    switch.down = True
    started = time.monotonic()
    record_a_run(box, tmp_path, range(2, 5))
    assert time.monotonic() - started < 5  # the run goes on: nothing waits for the store
    assert box.pending > 10
    assert "the tracking store did not answer" in capsys.readouterr().err
    switch.down = False
    assert box.end("FINISHED", wait_s=30) == 0
    assert_complete(client, box.info.run_id, range(0, 5))
    assert "answers again" in capsys.readouterr().err


def test_a_store_refusing_a_call_raises_as_before(store):
    box = store[2]
    box.log_params({"size": 48})
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        box.log_params({"size": 64})
    assert not box.queue.exists()


def test_sync_sends_what_a_run_left_once_however_often_it_runs(store, tmp_path, capsys):
    client, switch, box = store
    switch.down = True
    record_a_run(box, tmp_path, range(0, 3))
    assert box.end("FINISHED", wait_s=0.2) > 0  # the store stayed away: the run gives up
    line = box.undelivered_line()
    run_dir = tmp_path / "run"
    assert f"are queued in {run_dir / QUEUE_DIR}" in line
    assert line.endswith(f"send them later with: python -m style_exp.runs sync {run_dir}")
    assert client.get_run(box.info.run_id).info.status == "RUNNING"
    capsys.readouterr()

    assert runs.main(["sync", str(run_dir)]) == 0
    assert f"record(s) of run {box.info.run_id} sent to" in capsys.readouterr().out
    assert_complete(client, box.info.run_id, range(0, 3))
    # A crash after sending the last entries, before recording it: they are sent again.
    journal = Journal(run_dir / QUEUE_DIR)
    journal.mark_replayed(journal.replayed - 6)
    assert runs.main(["sync", str(run_dir)]) == 0
    assert "had been sent before" in capsys.readouterr().out
    assert_complete(client, box.info.run_id, range(0, 3))  # nothing twice
    assert runs.main(["sync", str(run_dir)]) == 0
    assert capsys.readouterr().out.startswith("nothing to send")


def test_sync_of_a_reaped_run_ends_it_as_it_ended(store, tmp_path, capsys):
    """The run's process ended with records queued: this host's reaper marked it FAILED;
    sync replaces that with how the run really ended."""
    client, switch, box = store
    switch.down = True
    record_a_run(box, tmp_path, range(0, 2))
    box.end("FINISHED", wait_s=0.1)
    client.set_tag(box.info.run_id, "error", "process 1 on here ended without finishing")
    client.set_terminated(box.info.run_id, "FAILED")
    assert runs.main(["sync", str(tmp_path / "run")]) == 0
    assert_complete(client, box.info.run_id, range(0, 2))


def test_sync_says_in_one_line_when_there_is_nothing_to_sync(tmp_path, capsys):
    assert runs.main(["sync", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no tracking queue here")


def test_a_stop_while_waiting_for_the_store_says_where_the_records_are(store, tmp_path,
                                                                        monkeypatch, capsys):
    _, switch, box = store
    switch.down = True
    record_a_run(box, tmp_path, range(0, 1))

    def stopped(timeout: float) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(box._drained, "wait", stopped)
    with pytest.raises(KeyboardInterrupt):
        box.end("FINISHED", wait_s=600)
    assert capsys.readouterr().err.splitlines()[-1] == box.undelivered_line()


def test_a_sweep_whose_server_is_still_away_gets_its_summary_and_exit_code(tmp_path,
                                                                          monkeypatch,
                                                                          capsys):
    """Its jobs gave up waiting (each said what to sync): the summary still lists them and
    the sweep exits with their code, instead of Hydra's warning that the callback failed."""
    from omegaconf import OmegaConf

    from style_exp.app.callbacks import SweepSummary
    from style_exp.app.sweeps import SWEEP_ENV, JobOutcome
    from style_exp.cluster.server import LOOPBACK, free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv(SWEEP_ENV, raising=False)
    uri = f"http://{LOOPBACK}:{free_port(LOOPBACK)}"  # nothing listens there
    JobOutcome(0, ("seed=0",), "failed", 1, "the tracking store did not answer: ...").write(
        tmp_path / "0")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                               "tracking": {"uri": uri, "experiment": "e"}})
    with pytest.raises(SystemExit) as ended:
        SweepSummary().on_multirun_end(config)
    assert ended.value.code == 1
    out = capsys.readouterr().out
    assert "1 jobs, 1 failed" in out and f"{uri} (did not answer" in out


def test_sync_while_the_store_is_still_away_fails_in_one_line_and_can_run_again(
        tmp_path, monkeypatch, capsys):
    from style_exp.cluster.server import LOOPBACK, free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://{LOOPBACK}:{free_port(LOOPBACK)}"  # nothing listens there
    journal = Journal.create(tmp_path / QUEUE_DIR, {"tracking_uri": uri, "run_id": "0" * 32})
    journal.append({"op": "batch", "tags": {"stage": "last"}})
    assert runs.main(["sync", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the tracking store did not answer") and len(err.splitlines()) == 1
    assert "0 of 1 record(s) sent, run sync again later" in err
    assert Journal(tmp_path / QUEUE_DIR).replayed == 0


def test_an_image_the_outage_cut_short_is_completed_not_sent_twice(store, tmp_path, capsys):
    """The server went away between MLflow's two uploads of an image (seen in the fault
    test): the replay sends the missing compressed copy, not the image again."""
    client, _, box = store
    run_id, pixels = box.info.run_id, np.full((8, 8, 3), 7, np.uint8)
    client.log_image(run_id, pixels, key="progress", step=30, timestamp=1234, synchronous=True)
    (compressed,) = [path for path in images(client, run_id) if path.endswith(".webp")]
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (artifacts / compressed).unlink()  # what the server had kept
    journal = Journal.create(tmp_path / "run" / QUEUE_DIR,
                             {"tracking_uri": client.tracking_uri, "run_id": run_id})
    path = journal.new_file("image.png")
    Image.fromarray(pixels).save(path)
    journal.append({"op": "image", "key": "progress", "step": 30, "timestamp": 1234,
                    "file": str(path.relative_to(journal.directory))})
    assert runs.main(["sync", str(tmp_path / "run")]) == 0
    assert images(client, run_id) == sorted([compressed, compressed.replace(
        "+compressed.webp", ".png")])
