"""An append-only record on local disk of what a run could not send to its tracking store.

One JSON object per line in ``journal.jsonl``, each line written whole and fsynced
before the call that made it returns, so what a run recorded survives the process;
files it refers to are copied beside it (``files/``). ``replayed`` holds how many
entries have reached the store (replaced atomically after each one), so replaying
again, after a crash or a second ``sync``, starts where the last one stopped. A crash
while appending leaves at most a torn last line without its newline: it is not an
entry, and is ignored. Knows nothing of MLflow: ``outbox.py`` decides what is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

ENTRIES, POSITION, FILES, HEADER = "journal.jsonl", "replayed", "files", "run.json"


def _fsync_dir(directory: Path) -> None:
    """Make a new name in ``directory`` durable (the file's own fsync does not)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: the old or the new content survives a crash."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    _fsync_dir(path.parent)


class Journal:
    """The entries of one run's queue, in order, and how many of them were replayed."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.entries: list[dict[str, Any]] = self._read()
        position = directory / POSITION
        self.replayed = int(position.read_text()) if position.is_file() else 0

    @classmethod
    def create(cls, directory: Path, header: dict[str, Any]) -> Journal:
        """A queue for a run: ``header`` says which (store and run id), for ``sync``."""
        (directory / FILES).mkdir(parents=True, exist_ok=True)
        if not (directory / HEADER).is_file():
            _write_durably(directory / HEADER, json.dumps(header, indent=1))
        return cls(directory)

    @property
    def header(self) -> dict[str, Any]:
        return json.loads((self.directory / HEADER).read_text())

    def _read(self) -> list[dict[str, Any]]:
        path = self.directory / ENTRIES
        if not path.is_file():
            return []
        whole = path.read_bytes().rsplit(b"\n", 1)[0]  # past the last newline: torn, not ours
        return [json.loads(line) for line in whole.split(b"\n") if line]

    def append(self, entry: dict[str, Any]) -> None:
        """Add ``entry`` at the end, on disk before this returns."""
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        path = self.directory / ENTRIES
        new = not path.exists()
        with path.open("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        if new:
            _fsync_dir(self.directory)
        self.entries.append(entry)

    def new_file(self, name: str) -> Path:
        """Where the next entry keeps a file of its own (``files/<entry>/<name>``)."""
        target = self.directory / FILES / f"{len(self.entries):06d}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def stash(self, source: Path) -> str:
        """A copy of a file (or folder) the queue keeps until it is sent: its path in the queue."""
        target = self.new_file(source.name)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
            with target.open("rb") as handle:
                os.fsync(handle.fileno())
        return str(target.relative_to(self.directory))

    def path(self, stashed: str) -> Path:
        return self.directory / stashed

    def mark_replayed(self, count: int) -> None:
        """Say that the first ``count`` entries have reached the store."""
        _write_durably(self.directory / POSITION, f"{count}\n")
        self.replayed = count

    @property
    def pending(self) -> int:
        return len(self.entries) - self.replayed
