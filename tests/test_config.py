"""Config composition, overrides, the schema, and value checks that name the key."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from style_exp.app.parse import parse
from style_exp.spec.loss import LossSettings, blend_weights, layer_weights
from style_exp.spec.runspec import Scale
from style_exp.spec.settings import AdamSettings, ConfigError, LBFGSSettings


def test_defaults_keep_the_seed_loss_and_pick_the_measured_optimiser(compose_config):
    cfg = compose_config()
    assert (cfg.loss.content_weight, cfg.loss.style_weight, cfg.loss.tv_weight) == (5, 500, 100)
    assert list(cfg.loss.content_layers) == ["relu4_2"]
    assert list(cfg.loss.style_layers) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert (cfg.optimizer.name, cfg.init.kind, cfg.precision) == ("lbfgs", "content", "auto")
    assert cfg.stop.tolerance > 0  # iterations is a cap
    assert (cfg.size, cfg.style_scale, cfg.model.pooling) == (512, 1.0, "max")
    spec = parse(cfg)  # the demo: its own size and iterations
    assert spec.loss == LossSettings().weights() and spec.loop.optimizer == LBFGSSettings()
    assert (spec.size, spec.iterations) == (cfg.demo.size, cfg.demo.iterations)
    assert spec.scales == (Scale(cfg.demo.size, cfg.demo.iterations),)
    assert spec.inputs.demo and spec.inputs.blend == (1.0,)


def test_seed_paper_preset_is_the_seed_codes_settings(compose_config):
    cfg = compose_config(["experiment=seed_paper"])
    assert (cfg.loss.content_weight, cfg.loss.style_weight, cfg.loss.tv_weight) == (5, 500, 100)
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("adam", 10.0)
    assert (cfg.optimizer.beta1, cfg.optimizer.beta2, cfg.optimizer.epsilon) == (0.9, 0.999, 1e-8)
    assert cfg.optimizer.schedule == "constant"
    assert (cfg.init.kind, cfg.init.noise_scale, cfg.init.noise_ratio) == ("noise", 0.256, 0.0)
    assert (cfg.iterations, cfg.precision, cfg.stop.tolerance) == (1000, "float32", 0)
    assert cfg.model.pooling == "max" and cfg.loss.style_layer_exponent == 1.0
    assert parse(cfg).loop.optimizer == AdamSettings()


def test_overrides_and_groups(compose_config):
    cfg = compose_config([
        "content=photo.jpg", "style=[a.jpg,b.jpg]", "style_weights=[0.8,0.2]", "size=256",
        "loss.style_weight=50", "optimizer=adam", "optimizer.lr=2", "init=image",
        "init.path=start.png",
        "model.pooling=avg", "stop.tolerance=0", "precision=bfloat16",
    ])
    spec = parse(cfg)
    assert spec.inputs.styles == ("a.jpg", "b.jpg") and spec.inputs.blend == (0.8, 0.2)
    assert spec.size == 256 and spec.loss.style == 50
    assert spec.loop.optimizer == AdamSettings(lr=2.0)
    assert spec.init.kind == "image" and spec.init.path == "start.png"
    assert spec.loop.stop.tolerance == 0 and spec.precision == "bfloat16"
    assert spec.model.pooling == "avg"
    assert spec.files() == {"content": "photo.jpg", "style_0": "a.jpg", "style_1": "b.jpg",
                            "init": "start.png"}


def test_single_style_path(compose_config):
    spec = parse(compose_config(["content=c.jpg", "style=p.jpg"]))
    assert spec.inputs.styles == ("p.jpg",) and spec.inputs.blend == (1.0,)


@pytest.mark.parametrize("override", ["loss.stlye_weight=1", "typo=3", "model.pooling_x=max"])
def test_schema_rejects_unknown_keys(compose_config, override):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config([override])
    assert override.split("=")[0].split(".")[-1] in str(error.value.__cause__ or error.value)


def test_schema_rejects_wrong_types(compose_config):
    with pytest.raises((ConfigCompositionException, ValidationError), match="size"):
        compose_config(["size=big"])


@pytest.mark.parametrize("override, message", [
    ("size=0", r"must be positive, got 0 \(size\)"),
    ("iterations=-5", r"must be positive.* \(iterations\)"),
    ("loss.style_weight=-1", r"must be non-negative.* \(loss.style_weight\)"),
    ("loss.style_layers=[relu1_1,relu9_9]", r"unknown VGG-19 layer.* \(loss.style_layers\)"),
    ("loss.content_layers=[]", r"at least one layer.* \(loss.content_layers\)"),
    ("loss.style_layer_weights=[1,2]", r"2 values for 5 layers \(loss.style_layer_weights\)"),
    ("model.pooling=median", r"must be one of.* \(model.pooling\)"),
    ("optimizer=adam optimizer.beta1=1.5", r"must be in \[0, 1\), got 1.5 \(optimizer.beta1\)"),
    ("init=image", r"kind=image needs init.path=FILE \(init.kind\)"),
    ("content=only_content.jpg", "give both content=FILE and style=FILE"),
    ("stop.window=0", r"must be positive, got 0 \(stop.window\)"),
    ("stop.tolerance=-0.1", r"must be non-negative, got -0.1 \(stop.tolerance\)"),
    ("precision=half", r"must be one of \('auto', 'float32'.* \(precision\)"),
    ("determinism=true xla=true", r"XLA has no deterministic gradient of max pooling \(xla\)"),
    ("tracking.uri=http://admin:hunter2@127.0.0.1:5000",
     r"must not contain a password.* \(tracking.uri\)"),
    ("memory.retry=always", r"must be one of \('tiles', 'none'\), got 'always' \(memory.retry\)"),
    ("sweep.resume=''", r"must be true, false or a sweep id, got '' \(sweep.resume\)"),
    ("tiles=32", r"must be 0 \(off\), auto or a side of at least 64 px, got 32 \(tiles\)"),
    ("scales=[128,64] size=64", r"must be positive and increasing.* \(scales\)"),
])
def test_bad_values_name_the_key(parse_config, override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(override.split())


def test_style_weight_count_must_match(compose_config):
    cfg = compose_config(["content=c.jpg", "style=[a.jpg,b.jpg]", "style_weights=[1,2,3]"])
    with pytest.raises(ConfigError, match="style_weights has 3 value.* 2 style"):
        parse(cfg)


def test_blend_and_layer_weights_are_normalised():
    assert blend_weights(None, 4) == (0.25,) * 4
    assert blend_weights([4, 1], 2) == (0.8, 0.2)
    assert layer_weights("loss.style_layers", ["relu1_1", "relu2_1"], [1, 3]) == {
        "relu1_1": 0.25, "relu2_1": 0.75}
    with pytest.raises(ConfigError, match="non-negative"):
        blend_weights([1, -1], 2)


def test_the_demo_takes_its_own_size_unless_one_is_given(compose_config):
    """The demo's size and iterations apply once, at parsing, to the keys not given."""
    assert parse(compose_config(), []).size == compose_config().demo.size
    chosen = parse(compose_config(["size=96"]), ["size=96"])
    assert (chosen.size, chosen.iterations) == (96, compose_config().demo.iterations)
    real = parse(compose_config(["content=a.jpg", "style=b.jpg"]), [])
    assert (real.size, real.iterations) == (512, 1000)
    assert real.record["size"] == 512 and parse(compose_config()).record["size"] == 256
