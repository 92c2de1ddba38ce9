"""A sweep's jobs in one process share the network and the compiled steps (``job.WARM``),
and each still makes exactly the image it would make alone."""

import numpy as np
import pytest
from conftest import gradient_image, run_config, stripes_image
from PIL import Image

from style_exp.app import job, preflight
from style_exp.app.job import WARM, Warm


@pytest.fixture
def overrides(tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    Image.fromarray(gradient_image(40, 48).astype(np.uint8)).save(content)
    Image.fromarray(stripes_image(48, 48).astype(np.uint8)).save(style)
    (tmp_path / "store").mkdir()
    return [f"content={content}", f"style={style}", "size=48", "scales=[32,48]",
            "iterations=5", "init=noise", "precision=float32", "progress=false",
            f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}"]


def test_a_warm_job_makes_the_image_a_cold_one_makes(compose_config, tmp_path, overrides,
                                                     monkeypatch):
    built, build_network = [], job.build_network
    monkeypatch.setattr(job, "build_network",
                        lambda *args: built.append(args) or build_network(*args))

    def run(name: str, *extra: str) -> np.ndarray:
        args = [*overrides, *extra]
        return run_config(compose_config(args), tmp_path / name, args).image

    def loops() -> dict[int, object]:  # per scale side, the loop around its compiled step
        return {side: space._loop for side, space in job.WARM._kept["workspaces"][1].items()}

    other = ("seed=2", "loss.style_weight=50")  # term weights are the step's arguments
    monkeypatch.setattr(job, "WARM", Warm())  # a process that has run nothing yet
    other_cold = run("other_cold", *other)
    monkeypatch.setattr(job, "WARM", Warm())
    cold = run("cold", "seed=1")
    first = loops()
    other_warm = run("other_warm", *other)
    warm = run("warm", "seed=1")
    assert len(built) == 2, "a warm job built the network again"
    assert loops() == first, "the compiled steps were built again"
    # The L-BFGS state, the seed's noise, the targets and the weights are the job's own.
    np.testing.assert_array_equal(other_warm, other_cold)
    np.testing.assert_array_equal(warm, cold)


def test_warm_keeps_one_value_per_name_and_rebuilds_on_a_new_key():
    warm, builds = Warm(), []

    def build(value):
        return lambda: builds.append(value) or value

    assert warm.get("network", ("max",), build("max net")) == "max net"
    assert warm.get("network", ("max",), build("other")) == "max net"
    assert warm.get("network", ("avg",), build("avg net")) == "avg net"
    assert warm.get("network", ("max",), build("max again")) == "max again"
    assert builds == ["max net", "avg net", "max again"]


def test_a_job_with_other_pooling_or_precision_gets_its_own_network(parse_config, monkeypatch):
    monkeypatch.setattr(job, "WARM", Warm())
    base = ["size=32", "iterations=2", "precision=float32"]
    first = job.prepare(preflight.check(parse_config(base))).network
    same = job.prepare(preflight.check(parse_config([*base, "seed=3"]))).network
    avg = job.prepare(preflight.check(parse_config([*base, "model.pooling=avg"]))).network
    assert same is first
    assert avg is not first and avg.pooling == "avg"
    assert WARM is not job.WARM  # the module's own cache was left alone
