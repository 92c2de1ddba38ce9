"""The architecture's rules: one source per default, every config option composes, layers."""

import ast
import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from style_exp.app import schema as schema_module
from style_exp.app.parse import parse
from style_exp.app.schema import settings_from
from style_exp.spec.loss import LossSettings
from style_exp.spec.runspec import RunSpec
from style_exp.spec.settings import (
    OPTIMIZERS,
    ClipSettings,
    InitSettings,
    ModelSettings,
    StopSettings,
    ThreadSettings,
    VideoSettings,
)

PACKAGE = PROJECT / "style_exp"
# The layers, in order: each module imports only from its own layer and the ones before.
LAYERS = ("spec", "engine", "app", "cluster")
# Top-level modules: the commands users type (``python -m style_exp.compare``), kept.
COMMANDS = {"compare", "reproduce", "runs", "server", "worker"}


def _layer_modules(layer: str) -> list[str]:
    return sorted(f"style_exp.{layer}.{path.stem}" for path in (PACKAGE / layer).glob("*.py")
                  if path.stem != "__init__")


@pytest.mark.parametrize("group, option, settings", [
    *[("optimizer", name, settings) for name, settings in OPTIMIZERS.items()],
    ("init", "noise", InitSettings),
    ("video", "default", VideoSettings),
    ("video", "default", ClipSettings),
    ("loss", "gatys", LossSettings),
    ("model", "vgg19", ModelSettings),
])
def test_library_schema_and_yaml_defaults_agree(compose_config, group, option, settings):
    """What the CLI composes by default is what a library user gets from ``settings()``."""
    composed = compose_config([f"{group}={option}"])[group]
    assert settings_from(composed, settings) == settings()


def test_the_schemas_made_from_settings_travel_to_a_launchers_workers():
    """joblib's workers receive the composed config's classes pickled: by reference, with
    every field (a class pickled by value lost its dataclass fields: a sweep's jobs then
    failed to compose)."""
    import cloudpickle

    for schema in [schema_module.LossConfig, schema_module.VideoConfig,
                   *schema_module.OPTIMIZER_SCHEMAS.values()]:
        travelled = pickle.loads(cloudpickle.dumps(schema))
        assert travelled is schema and dataclasses.fields(travelled)


@pytest.mark.parametrize("key, settings", [("stop", StopSettings), ("threads", ThreadSettings)])
def test_keys_without_a_group_default_to_the_settings_too(compose_config, key, settings):
    assert settings_from(compose_config()[key], settings) == settings()


def test_every_optimizer_has_its_yaml_and_every_yaml_its_optimizer():
    yaml_names = {path.stem for path in (PROJECT / "conf" / "optimizer").glob("*.yaml")}
    assert yaml_names == set(OPTIMIZERS)


@pytest.mark.parametrize("group, option", sorted(
    (path.parent.name, path.stem) for path in (PROJECT / "conf").glob("*/*.yaml")
    if path.parent.name != "experiment"))
def test_every_config_option_composes_and_parses(parse_config, group, option):
    extra = ["init.path=start.png"] if (group, option) == ("init", "image") else []
    assert isinstance(parse_config([f"{group}={option}", *extra]), RunSpec)


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
def test_every_job_of_every_experiment_preset_composes_and_parses(compose_config, experiment):
    """``compose()`` ignores ``hydra.sweeper.params``: each swept value is checked as its job."""
    jobs = _sweep_jobs(experiment)
    specs = [parse(compose_config(job), job) for job in jobs]
    # Every job is a different run: the swept values reached the typed values (the record
    # of the config is left out of a RunSpec's repr).
    assert len({repr(spec) for spec in specs}) == len(specs)


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
    # ...and the tools that only read runs: `style_exp.compare --help` took 3 s and
    # printed TensorFlow's start-up lines twice; a search's sweeper runs in the launcher
    modules += ["style_exp.app.compare", "style_exp.app.pareto", "style_exp.app.views",
                "style_exp.app.search", "style_exp.app.study"]
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


def test_parsing_a_config_needs_no_tensorflow():
    code = ("from hydra import compose, initialize_config_dir\n"
            "from style_exp.app.parse import parse\n"
            "from style_exp.app.schema import register_schemas\n"
            "register_schemas()\n"
            f"with initialize_config_dir(config_dir={str(Path(PROJECT, 'conf'))!r}, "
            "version_base='1.3'):\n"
            "    parse(compose(config_name='config', overrides=['optimizer=lbfgs']))")
    assert "tensorflow" not in _modules_loaded_by(code)


# The boundary: the modules that may see Hydra's or OmegaConf's objects. Hydra calls
# ``cli.run_job`` and the sweep callback with a config, ``parse`` turns it into a
# RunSpec; the schema defines it; reproduce reads a recorded one back into the schema;
# the sweep and launcher modules read Hydra's own files and register its presets.
CONFIG_BOUNDARY = {"style_exp.app.schema", "style_exp.app.parse", "style_exp.app.cli",
                   "style_exp.app.callbacks", "style_exp.app.reproduce",
                   "style_exp.app.sweeps", "style_exp.app.batches", "style_exp.app.search",
                   "style_exp.cluster.launchers"}


def _uses_of_the_config(path: Path) -> list[str]:
    """Where a module imports Hydra or OmegaConf, or a function takes a config."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom | ast.Import):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                alias.name for alias in node.names]
            found += [f"imports {m}" for m in modules if m.split(".")[0] in ("hydra", "omegaconf")]
        elif isinstance(node, ast.FunctionDef):
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            found += [f"{node.name}({argument.arg})" for argument in arguments
                      if argument.arg == "cfg" or "Config" in ast.unparse(argument.annotation or
                                                                            ast.Constant(""))]
    return found


def test_nothing_below_parse_sees_the_config():
    """Parse, don't validate: below ``parse`` values arrive as a RunSpec (or parts of one),
    so no function re-reads, re-checks or re-derives the config."""
    uses = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PROJECT).with_suffix("").parts)
        if module not in CONFIG_BOUNDARY and _uses_of_the_config(path):
            uses[module] = _uses_of_the_config(path)
    assert _uses_of_the_config(PACKAGE / "app" / "cli.py")  # the check sees the boundary's
    assert uses == {}


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
