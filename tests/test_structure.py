"""The architecture's rules: one source per default, every config option composes, layers."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from style_exp.app.schema import settings_from, validate
from style_exp.engine.init import InitSettings
from style_exp.spec.settings import OPTIMIZERS, VideoSettings

PACKAGE = PROJECT / "style_exp"
# The layers, in order: each module imports only from its own layer and the ones before.
LAYERS = ("spec", "engine", "app", "cluster")
# Top-level modules: the commands users type (``python -m style_exp.compare``), kept.
COMMANDS = {"compare", "reproduce", "runs", "server"}


def _layer_modules(layer: str) -> list[str]:
    return sorted(f"style_exp.{layer}.{path.stem}" for path in (PACKAGE / layer).glob("*.py")
                  if path.stem != "__init__")


@pytest.mark.parametrize("group, option, settings", [
    *[("optimizer", name, settings) for name, settings in OPTIMIZERS.items()],
    ("init", "noise", InitSettings),
    ("video", "default", VideoSettings),
])
def test_library_schema_and_yaml_defaults_agree(compose_config, group, option, settings):
    """What the CLI composes by default is what a library user gets from ``settings()``."""
    composed = compose_config([f"{group}={option}"])[group]
    assert settings_from(composed, settings) == settings()


def test_every_optimizer_has_its_yaml_and_every_yaml_its_optimizer():
    yaml_names = {path.stem for path in (PROJECT / "conf" / "optimizer").glob("*.yaml")}
    assert yaml_names == set(OPTIMIZERS)


@pytest.mark.parametrize("group, option", sorted(
    (path.parent.name, path.stem) for path in (PROJECT / "conf").glob("*/*.yaml")
    if path.parent.name != "experiment"))
def test_every_config_option_composes_and_validates(compose_config, group, option):
    extra = ["init.path=start.png"] if (group, option) == ("init", "image") else []
    validate(compose_config([f"{group}={option}", *extra]))


def _sweep_jobs(experiment: str) -> list[list[str]]:
    """Each job's overrides for ``run.py -m experiment=EXPERIMENT``, expanded from the preset's
    ``hydra.sweeper.params`` the way Hydra's basic sweeper does (one job if it sweeps nothing)."""
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=[f"experiment={experiment}"],
                            return_hydra_config=True).hydra
    params = hydra_cfg.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    overrides = OverridesParser.create().parse_overrides(
        [*arguments, f"experiment={experiment}"])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


@pytest.mark.parametrize("experiment", sorted(
    path.stem for path in (PROJECT / "conf" / "experiment").glob("*.yaml")))
def test_every_job_of_every_experiment_preset_composes_and_validates(compose_config, experiment):
    """``compose()`` ignores ``hydra.sweeper.params``: each swept value is checked as its job."""
    configs = [compose_config(job) for job in _sweep_jobs(experiment)]
    for config in configs:
        validate(config)
    # Every job is a different config: the swept values reached what was validated.
    assert len({OmegaConf.to_yaml(config) for config in configs}) == len(configs)


def _modules_loaded_by(code: str) -> set[str]:
    output = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(*sys.modules)"],
                            cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in output.split()}


def _imports(modules: list[str]) -> str:
    return "\n".join(f"import {module}" for module in modules)


def test_the_package_is_its_layer_folders_and_the_command_names():
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir()} - {"__pycache__"} == {
        *LAYERS}
    assert {path.stem for path in PACKAGE.glob("*.py")} == {"__init__", *COMMANDS}


def test_spec_loads_no_tensorflow_hydra_or_mlflow():
    loaded = _modules_loaded_by(_imports(_layer_modules("spec")))
    assert "style_exp" in loaded  # the check sees what the layer pulls in
    assert not loaded & {"tensorflow", "mlflow", "hydra", "omegaconf"}


def test_engine_imports_neither_mlflow_nor_hydra():
    loaded = _modules_loaded_by(_imports(_layer_modules("engine")))
    assert "tensorflow" in loaded  # the check sees what the engine pulls in
    assert not loaded & {"mlflow", "hydra", "omegaconf"}


def test_tracking_console_sweep_and_launcher_modules_load_no_tensorflow():
    """A parallel sweep's launching process prints the summary through these: loading
    TensorFlow there cost seconds after the last job and put its start-up lines on the
    console."""
    modules = [f"style_exp.app.{name}" for name in ("tracking", "callbacks", "console",
                                                   "labels", "runs", "sweeps")]
    modules += ["style_exp.engine.progress", "style_exp.cluster.launchers"]
    loaded = _modules_loaded_by(_imports(modules))
    assert "mlflow" in loaded  # the check sees what these modules pull in
    assert "tensorflow" not in loaded


def _project_imports() -> dict[str, set[str]]:
    """Which of the package's modules each module imports, wherever in the file (an
    import inside a function only hides a cycle, or a layer crossed, until it runs)."""
    modules = {path: ".".join(path.relative_to(PROJECT).with_suffix("").parts)
               for path in PACKAGE.rglob("*.py") if path.stem != "__init__"}
    names = set(modules.values())
    graph = {}
    for path, name in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("style_exp"):
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = found & names - {name}
    return graph


def test_each_layer_imports_only_from_itself_and_the_layers_before_it():
    graph = _project_imports()
    crossings = [f"{name} imports {imported}" for name, imports in sorted(graph.items())
                 for imported in sorted(imports) if name.split(".")[1] in LAYERS
                 and LAYERS.index(imported.split(".")[1]) > LAYERS.index(name.split(".")[1])]
    assert graph["style_exp.app.execute"]  # the check sees the imports
    assert not crossings


def test_no_import_cycle_among_the_packages_modules():
    """Each module builds on ones that do not need it back, so layers can be told apart."""
    graph, done, path = _project_imports(), set(), []

    def visit(name: str) -> None:
        assert name not in path, "import cycle: " + " -> ".join([*path[path.index(name):], name])
        if name in done:
            return
        path.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        path.pop()
        done.add(name)

    assert graph["style_exp.cluster.launchers"]  # the check sees the imports
    for name in sorted(graph):
        visit(name)


def test_config_validation_needs_no_tensorflow():
    code = ("from hydra import compose, initialize_config_dir\n"
            "from style_exp.app.schema import register_schemas, validate\n"
            "register_schemas()\n"
            f"with initialize_config_dir(config_dir={str(Path(PROJECT, 'conf'))!r}, "
            "version_base='1.3'):\n"
            "    validate(compose(config_name='config', overrides=['optimizer=lbfgs']))")
    assert "tensorflow" not in _modules_loaded_by(code)


def test_every_benchmark_imports():
    """Benchmarks run by hand, rarely: an engine change must not leave one unable to start."""
    scripts = sorted(path.stem for path in (PROJECT / "benchmarks").glob("*.py"))
    imports = "\n".join(f"import benchmarks.{script}" for script in scripts if script != "__init__")
    subprocess.run([sys.executable, "-c", imports], cwd=PROJECT, check=True, capture_output=True)


def test_tensorflow_starts_without_keras_which_still_loads_on_use():
    loaded = _modules_loaded_by("import style_exp.engine.stylize")
    assert not loaded & {"keras", "sklearn", "pandas"}
    code = ("import style_exp.engine.stylize\nimport tensorflow as tf\n"
            "assert tf.keras.layers.Dense(2)(tf.ones((1, 3))).shape == (1, 2)")
    assert "keras" in _modules_loaded_by(code)
