"""A run's records on their way to the tracking store: sent at once, queued on disk while a
server does not answer, replayed in order when it answers again.

While the server answers, each call goes straight to it, and an error it answers with
is raised as MLflow raises it. When it does not answer (a refused connection, a
time-out or a 5xx, after MLflow's own HTTP retries), that call and every later one are
appended to the run's journal (``journal.py``, in ``RUN_DIR/tracking_queue``) and
return at once, so the optimisation goes on; a thread retries with backoff (1 s,
doubling to 15 s) and replays the journal in order, after which calls go straight to
the store again. The run's end waits for the queue (``tracking.outage_wait_min``);
what is still queued then is sent later by ``python -m style_exp.runs sync RUN_DIR``.

Not MLflow's asynchronous logging (``synchronous=False``): measured with MLflow 3.17.2
against a server stopped mid-run, it returns at once, tries each batch with the same
HTTP retries (about 4.5 s with two), then logs an error and drops it; nothing is sent
when the server returns, nothing is kept on disk, and artifacts and images are not
covered. Local stores (SQLite) are not queued: their errors are raised as before.

Replaying an entry twice changes nothing (a crash between sending one and recording
that it was sent): the store keeps one metric per key, step, time stamp and value;
params and tags are set to the same value; artifacts are overwritten; an image is sent
only when the store has none of its key, step and time stamp, and one sent half (its
compressed copy missing) is completed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import requests
from mlflow.entities import Metric, Param, RunInfo, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.multimedia import compress_image_size
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES
from PIL import Image

from style_exp.app.journal import HEADER, Journal
from style_exp.spec.errors import RunFailure, UserError

QUEUE_DIR = "tracking_queue"  # in the run's directory
FIRST_RETRY_S, LAST_RETRY_S = 1.0, 15.0  # the replay's backoff while the store is away
SYNC_COMMAND = "python -m style_exp.runs sync"
REJECTED = "rejected.jsonl"  # entries the store refused on replay, with its answer


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the store did not answer (worth retrying), rather than that
    it refused the call."""
    if isinstance(error, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return True
    return isinstance(error, MlflowException) and (
        error.get_http_status_code() >= 500 or "failed with exception" in str(error))


@contextlib.contextmanager
def unless_unreachable() -> Iterator[None]:
    """Skip the rest of the block when the store does not answer: for housekeeping a run
    can do without (reaping other runs), which must not end it in an outage."""
    try:
        yield
    except Exception as error:
        if not unreachable(error):
            raise


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


class Outbox:
    """One run's records: straight to the store while it answers, else to the journal.

    The methods are MLflow's fluent logging calls for this run. ``queue`` is where the
    journal goes when needed (None: never queue, raise what the store raises);
    ``heartbeat`` makes the tag sent with each step's metrics (``runs.heartbeat``).
    """

    def __init__(self, client: MlflowClient, info: RunInfo, queue: Path | None,
                 heartbeat: Callable[[], RunTag]):
        self.client, self.info, self.queue, self.heartbeat = client, info, queue, heartbeat
        self._journal: Journal | None = None
        self._lock = threading.Lock()
        self._drained = threading.Event()  # set: nothing queued, calls go to the store
        self._drained.set()
        self._outage: tuple[float, int] = (0.0, 0)  # when the latest began, its first entry
        if queue is not None:  # an outage is said once, not by each of urllib3's retries
            logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

    # MLflow's calls --------------------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int | None = None,
                    alive: bool = False) -> None:
        """Metrics at ``step``; ``alive``: with the heartbeat tag (``runs.reap`` reads it)."""
        self.log_batch(metrics, step, alive=alive)

    def log_params(self, params: dict[str, Any]) -> None:
        self.log_batch(params=params)

    def log_batch(self, metrics: dict[str, float] | None = None, step: int | None = None,
                  params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
                  alive: bool = False) -> None:
        """Metrics at ``step``, params and tags in one call: one transaction of the store
        (on SQLite each call is one, about 15-40 ms here) instead of one each."""
        self._record({"op": "batch", "metrics": {k: float(v) for k, v in (metrics or {}).items()},
                      "step": step or 0, "timestamp": int(1000 * time.time()),
                      "params": {k: str(v) for k, v in (params or {}).items()},
                      "tags": {k: str(v) for k, v in (tags or {}).items()}, "alive": alive})

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.log_batch(tags=tags)

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._record({"op": "text", "text": text, "path": artifact_file})

    def log_dict(self, dictionary: dict[str, Any], artifact_file: str) -> None:
        self.log_text(json.dumps(dictionary, indent=2), artifact_file)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._record({"op": "artifact", "source": str(Path(local_path).resolve()),
                      "dir": artifact_path})

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self.log_artifact(local_dir, artifact_path)  # a folder: its files go to artifact_path

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """One image (uint8) of the series ``key``, as the UI's image grid shows them."""
        self._record({"op": "image", "key": key, "step": step,
                      "timestamp": int(1000 * time.time())}, image)

    def end(self, status: str, wait_s: float) -> int:
        """End the run as ``status``, waiting up to ``wait_s`` for the queue to reach the
        store; how many records are still queued (0: the store has everything)."""
        self._record({"op": "end", "status": status})
        try:
            self._drained.wait(wait_s)
        except BaseException:  # a stop while waiting: say where the records are
            print(self.undelivered_line(), file=sys.stderr, flush=True)
            raise
        return self.pending

    # Queue -----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        with self._lock:
            return 0 if self._journal is None else self._journal.pending

    def undelivered_line(self) -> str:
        """The one line that says where the unsent records are and how to send them."""
        assert self.queue is not None
        return (f"the tracking store did not answer: {self.pending} record(s) of run "
                f"{self.info.run_id} are queued in {self.queue}; send them later with: "
                f"{SYNC_COMMAND} {self.queue.parent}")

    def _record(self, entry: dict[str, Any], image: np.ndarray | None = None) -> None:
        """Send ``entry`` now, or queue it behind the entries already queued."""
        if self._drained.is_set():
            try:
                send(self.client, self.info.run_id, entry, image=image, heartbeat=self.heartbeat)
                return
            except Exception as error:
                if self.queue is None or not unreachable(error):
                    raise
                self._start_queue(error)
        with self._lock:
            self._journal.append(_stashed(self._journal, entry, image))
            if self._drained.is_set():  # the replay ended meanwhile: start another
                self._drained.clear()
                threading.Thread(target=self._replay, name="tracking-replay",
                                 daemon=True).start()

    def _start_queue(self, error: BaseException) -> None:
        with self._lock:
            if self._journal is None:
                self._journal = Journal.create(self.queue, {
                    "tracking_uri": self.client.tracking_uri, "run_id": self.info.run_id})
            self._outage = (time.monotonic(), len(self._journal.entries))
        print(f"warning: the tracking store did not answer ({_first_line(error)}); the run "
              f"goes on, queueing its records in {self.queue} until it answers",
              file=sys.stderr, flush=True)

    def _replay(self) -> None:
        """The replay thread: send the queued entries in order, retrying with backoff."""
        journal, delay = self._journal, FIRST_RETRY_S
        while True:
            with self._lock:
                if not journal.pending:
                    self._drained.set()
                    break
                index = journal.replayed
            try:
                send(self.client, self.info.run_id, journal.entries[index], journal,
                     heartbeat=self.heartbeat)
            except Exception as error:
                if unreachable(error):
                    time.sleep(delay)
                    delay = min(2 * delay, LAST_RETRY_S)
                    continue
                reject(journal, index, error)
            journal.mark_replayed(index + 1)
            delay = FIRST_RETRY_S
        began, first = self._outage
        print(f"note: the tracking store answers again: {len(journal.entries) - first} queued "
              f"record(s) sent, {time.monotonic() - began:.0f} s after it stopped answering",
              file=sys.stderr, flush=True)


def _stashed(journal: Journal, entry: dict[str, Any], image: np.ndarray | None) -> dict:
    """``entry`` as the journal keeps it: its file or image copied into the queue."""
    if "source" in entry:
        source = Path(entry["source"])
        entry = {key: value for key, value in entry.items() if key != "source"}
        entry["file"] = journal.stash(source)
    if image is not None:
        path = journal.new_file("image.png")
        with path.open("wb") as handle:
            Image.fromarray(image).save(handle, format="PNG")
            handle.flush()
            os.fsync(handle.fileno())
        entry = {**entry, "file": str(path.relative_to(journal.directory))}
    return entry


def reject(journal: Journal, index: int, error: BaseException) -> None:
    """Keep an entry the store refused (and why) beside the queue, and say so."""
    with (journal.directory / REJECTED).open("a") as handle:
        handle.write(json.dumps({"entry": index, "error": _first_line(error)}) + "\n")
    print(f"warning: the tracking store refused queued record {index} "
          f"({_first_line(error)}); see {journal.directory / REJECTED}", file=sys.stderr,
          flush=True)


def send(client: MlflowClient, run_id: str, entry: dict[str, Any],
         journal: Journal | None = None, image: np.ndarray | None = None,
         heartbeat: Callable[[], RunTag] | None = None) -> None:
    """Make one entry's call; from a ``journal`` (a replay) its files are the queue's.

    ``heartbeat``: the run's process is alive, and says so with its metrics."""
    op = entry["op"]
    if op == "batch":
        tags = [RunTag(key, value) for key, value in entry.get("tags", {}).items()]
        client.log_batch(
            run_id, synchronous=True,
            metrics=[Metric(key, value, entry["timestamp"], entry["step"])
                     for key, value in entry.get("metrics", {}).items()],
            params=[Param(key, value) for key, value in entry.get("params", {}).items()],
            tags=[*tags, heartbeat()] if entry.get("alive") and heartbeat else tags)
    elif op == "text":
        client.log_text(run_id, entry["text"], entry["path"])
    elif op == "artifact":
        path = journal.path(entry["file"]) if journal else Path(entry["source"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), entry["dir"])
        else:
            client.log_artifact(run_id, str(path), entry["dir"])
    elif op == "image":
        if journal is not None:
            image = np.asarray(Image.open(journal.path(entry["file"])))
            if _completed_image(client, run_id, entry, image):
                return
        client.log_image(run_id, image, key=entry["key"], step=entry["step"],
                         timestamp=entry["timestamp"], synchronous=True)
    elif op == "end":
        if journal is not None and entry["status"] != "FAILED":
            with contextlib.suppress(MlflowException):  # reaped while its records were queued
                client.delete_tag(run_id, "error")
        client.set_terminated(run_id, entry["status"])
    else:
        raise ValueError(f"unknown record {op!r}")


def _completed_image(client: MlflowClient, run_id: str, entry: dict[str, Any],
                     image: np.ndarray) -> bool:
    """Whether the store has the image of ``entry``, once what a call cut short left out
    is sent: MLflow writes the image, then a compressed copy, then a tag, and a server
    that went away in between (seen in the fault test) has the first file only."""
    prefix = (f"images/{entry['key'].replace('/', '~')}+step+{entry['step']}"
              f"+timestamp+{entry['timestamp']}+")
    found = [info.path for info in client.list_artifacts(run_id, "images")
             if info.path.startswith(prefix)]
    full = [path for path in found if path.endswith(".png")]
    if not full:
        return False
    compressed = full[0].removesuffix(".png") + "+compressed.webp"
    if compressed not in found:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / Path(compressed).name
            compress_image_size(Image.fromarray(image)).save(path)
            client.log_artifact(run_id, str(path), "images")
    client.set_tag(run_id, MLFLOW_LOGGED_IMAGES, True)
    return True


def sync(run_dir: Path) -> str:
    """Send what a run left queued in ``run_dir`` to its store, from where the last replay
    stopped; what was done, in one line. Running it again sends nothing twice."""
    queue = run_dir / QUEUE_DIR
    if not (queue / HEADER).is_file():
        raise UserError("no tracking queue here: the run's records all reached its store, "
                        "or this is not a run's directory", str(queue))
    journal = Journal(queue)
    uri, run_id = journal.header["tracking_uri"], journal.header["run_id"]
    client, before = MlflowClient(uri), journal.replayed
    if not journal.pending:
        return f"nothing to send: all {before} record(s) of run {run_id} are in {uri}"
    for index in range(before, len(journal.entries)):
        try:
            send(client, run_id, journal.entries[index], journal)
        except Exception as error:
            if unreachable(error):
                raise RunFailure(f"the tracking store did not answer ({_first_line(error)}); "
                                 f"{index - before} of {len(journal.entries) - before} "
                                 "record(s) sent, run sync again later", uri) from error
            reject(journal, index, error)
        journal.mark_replayed(index + 1)
    return (f"{len(journal.entries) - before} record(s) of run {run_id} sent to {uri}"
            + (f" ({before} had been sent before)" if before else ""))
