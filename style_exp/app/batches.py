"""Batches of photos: ``python run.py -m 'content=photos/*.jpg' ...`` is one job per photo.

Hydra knows no file globs, and its basic sweeper splits values on commas, so the glob
is expanded here, before Hydra reads the command line: ``content=photos/*.jpg``
becomes ``content=photos/a.jpg,photos/b.jpg``, each path escaped by Hydra's own
override grammar (spaces, commas, brackets). Every launcher then runs it as any other
sweep, and it combines with other swept keys (``seed=0,1``). A directory still names a
clip's frames; a glob may match several clips, one job each.

The sweep's command digest (how ``sweep.resume=true`` finds the sweep again) is taken
from the glob as typed (:func:`as_typed`): a folder with a photo added resumes the same
sweep and runs the new photo only.

A glob without ``-m`` is refused rather than run as a sweep: without it Hydra runs one
job in ``hydra.run.dir``, as for ``seed=0,1`` (which Hydra refuses too), and switching
to a sweep silently would change where the outputs go.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from hydra._internal.grammar.utils import escape_special_characters
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, QuotedString
from hydra.errors import HydraException

from style_exp.spec.settings import ConfigError

KEY = "content"
MULTIRUN_FLAGS = ("-m", "--multirun", "hydra.mode=MULTIRUN")
# The overrides as typed, by the expanded override that replaced them (a JSON object),
# for the sweep's command digest; set by :func:`expand` for this process and its jobs.
TYPED_ENV = "STYLE_EXP_TYPED_OVERRIDES"


def expand(argv: list[str]) -> list[str]:
    """``argv`` (``sys.argv``) with each ``content=GLOB`` replaced by the files it matches,
    as one Hydra sweep override; a glob matching nothing, or given without ``-m``, is a
    :class:`ConfigError`."""
    typed: dict[str, str] = {}
    expanded = []
    for item in argv:
        paths = _glob_paths(item)
        if paths is None:
            expanded.append(item)
            continue
        override = f"{KEY}={','.join(map(_override_value, paths))}"
        if not any(flag in argv for flag in MULTIRUN_FLAGS):
            raise ConfigError(
                f"a glob matching {len(paths)} file{'s' * (len(paths) != 1)} is a batch: "
                "one job per photo, run as a sweep", item,
                f"add -m: python run.py -m '{item}' ...")
        typed[override] = item
        expanded.append(override)
    if typed:
        os.environ[TYPED_ENV] = json.dumps(typed)
    else:
        os.environ.pop(TYPED_ENV, None)
    return expanded


def as_typed(overrides: Iterable[str]) -> list[str]:
    """The overrides with each expanded glob put back as the user typed it."""
    typed: Mapping[str, str] = json.loads(os.environ.get(TYPED_ENV) or "{}")
    return [typed.get(item, item) for item in overrides]


def _glob_paths(item: str) -> list[str] | None:
    """The files ``item`` names if it is a ``content=`` override holding a glob, else None."""
    if not item.startswith(f"{KEY}="):
        return None
    try:
        parsed = OverridesParser.create().parse_override(item)
    except HydraException:
        return None  # Hydra says what is wrong with it
    value = parsed.value()
    values = [v.text if isinstance(v, QuotedString) else v
              for v in (value.list if isinstance(value, ChoiceSweep) else [value])]
    if not all(isinstance(v, str) for v in values) or not any(map(_is_glob, values)):
        return None
    paths = []
    for pattern in values:
        if not _is_glob(pattern):
            paths.append(pattern)
            continue
        matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise ConfigError(f"no file matches {pattern!r}", item,
                              f"a relative glob is read from {os.getcwd()}")
        paths += matched
    return list(dict.fromkeys(paths))


def _is_glob(value: str) -> bool:
    """A pattern, not a path: it has glob characters and names no existing file."""
    return glob.has_magic(value) and not Path(value).exists()


def _override_value(path: str) -> str:
    """``path`` written so that Hydra's override grammar reads it back exactly."""
    parser = OverridesParser.create()
    quoted = "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
    for written in (escape_special_characters(path), quoted):
        try:
            if parser.parse_override(f"{KEY}={written}").value() == path:
                return written
        except HydraException:
            continue
    raise ConfigError("this file name cannot be written as a Hydra value", path,
                      "rename the file")
