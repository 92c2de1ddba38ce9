"""Re-run a tracked run from its MLflow record alone and say whether the image is identical.

    python -m style_exp.reproduce RUN_ID [--tracking-uri URI] [--out DIR]

The record is the run's resolved ``config.yaml``, its Hydra overrides and
``reproduce.json`` (sha256 of every input file and of the VGG weights, library
versions, seed). Inputs are checked before anything runs: a missing or changed
file is refused, naming it. With ``determinism=true`` on the same machine and
versions the new image is pixel-identical. Exit status: 0 identical, 1 different,
2 refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from style_exp.app.cli import execute_checked, quiet_start_up
from style_exp.app.parse import parse
from style_exp.app.schema import Config, default_tracking_uri
from style_exp.engine.images import file_sha256
from style_exp.spec.runspec import Provenance


class ReproduceError(ValueError):
    """The run cannot be reproduced as recorded (the message says why)."""


@dataclass(frozen=True)
class Comparison:
    identical: bool
    max_abs_difference: int
    differing_pixels: int
    output: Path


def check_inputs(record: dict) -> None:
    """Refuse before running when an input file is missing or not the one recorded."""
    for name, entry in record["inputs"].items():
        path = Path(entry["path"])
        if not path.exists():
            raise ReproduceError(f"input {name} ({path}) is missing")
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise ReproduceError(
                f"input {name} ({path}) has changed since the run: sha256 {digest[:12]}... "
                f"instead of {entry['sha256'][:12]}..."
            )


def reproduce(run_id: str, tracking_uri: str, out: Path) -> Comparison:
    """Run again from the record and compare the new ``output.png`` with the original."""
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            record = json.loads(Path(client.download_artifacts(
                run_id, "reproduce.json", workdir)).read_text())
            # On the schema's defaults: a run recorded before a key existed still loads.
            config = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(
                client.download_artifacts(run_id, "config.yaml", workdir)))
            original = np.asarray(Image.open(client.download_artifacts(
                run_id, "output.png", workdir)).convert("RGB"))
        except (OSError, ValueError, MlflowException) as error:
            raise ReproduceError(f"run {run_id} has no complete reproduction record "
                                 f"({error})") from error
    check_inputs(record)
    config.tracking.uri = tracking_uri
    config.progress = False
    if config.precision == "auto":  # the original machine's choice, not this one's
        config.precision = record["compute_precision"]
    overrides = tuple(record["overrides"])
    # As run.py does: checked (this machine may have less memory than the original's),
    # then TensorFlow loads, quietly, and the plan is executed.
    execute_checked(parse(config, overrides), out, Provenance(overrides, {"reproduces": run_id}))
    produced = np.asarray(Image.open(out / "output.png").convert("RGB"))
    if produced.shape != original.shape:
        return Comparison(False, 255, produced.size // 3, out / "output.png")
    difference = np.abs(produced.astype(int) - original.astype(int))
    return Comparison(bool(difference.max() == 0), int(difference.max()),
                      int(np.count_nonzero(difference.max(axis=2))), out / "output.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    quiet_start_up()
    out = args.out or Path("runs/reproduce") / args.run_id
    try:
        result = reproduce(args.run_id, args.tracking_uri or default_tracking_uri(), out)
    except ReproduceError as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    if result.identical:
        print(f"identical: {result.output} matches run {args.run_id} pixel for pixel")
        return 0
    print(f"different: {result.differing_pixels} pixels differ, by at most "
          f"{result.max_abs_difference} (new image: {result.output})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
