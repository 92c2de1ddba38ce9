"""The command line as a user meets it: one-line errors, exit codes, signals, quiet start-up."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT, cli_env, run_cli, start_endless_run, store_uri
from mlflow.tracking import MlflowClient

from style_exp.app import runs
from style_exp.app.cli import XLA_CACHE_FLAG, with_xla_cache
from style_exp.engine import memory
from style_exp.engine.device import FROZEN_WEIGHTS_ENV, host_precision
from style_exp.engine.weights import default_cache_dir


def _error_lines(done):
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and 1 <= len(lines) <= 2, done.stderr
    assert lines[0].startswith("error: ") and all(
        line.startswith("hint: ") for line in lines[1:]), done.stderr
    return lines


@pytest.mark.parametrize(("args", "line"), [
    (["size=0"], "error: must be positive, got 0 (size)"),
    (["loss.stlye_weight=3"], "error: Key 'stlye_weight' not in 'LossConfig' (loss.stlye_weight)"),
    (["optimizer=sgd"], "error: Could not find 'optimizer/sgd' (command line)"),
    (["content=phötö.jpg", "style=p.jpg"], "error: cannot parse this override (content=phötö.jpg)"),
    (["content=c.jpg", "style=p.jpg", "style_weights=[1,2]"],
     "error: style_weights has 2 value(s) [1.0, 2.0] but there are 1 style image(s) "
     "(style_weights)"),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args, line):
    done = run_cli([*args, f"tracking.uri={store_uri(tmp_path)}"], tmp_path)
    assert done.returncode == 2
    assert _error_lines(done)[0] == line
    assert not (tmp_path / "store").exists()  # no MLflow store, so no run either


def test_input_files_are_checked_before_tensorflow_and_any_run(tmp_path, photos):
    photo, painting = photos
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    clip = tmp_path / "broken.mp4"
    clip.write_bytes(b"\x00" * 64)
    cases = {
        f"content={tmp_path / 'nope.jpg'}": f"error: image file not found ({tmp_path}/nope.jpg)",
        f"content={broken}": f"({broken})",
        f"content={clip}": f"({clip})",
        f"content='{tmp_path / 'phötö ü.jpg'}'": f"not found ({tmp_path / 'phötö ü.jpg'})",
    }
    for content, line in cases.items():
        started = time.perf_counter()
        done = run_cli([content, f"style={painting}", f"tracking.uri={store_uri(tmp_path)}"],
                       tmp_path)
        assert done.returncode == 2 and _error_lines(done)[0].endswith(line), done.stderr
        assert time.perf_counter() - started < 15  # 1-3 s when the machine is not loaded
    done = run_cli([f"content={photo}", f"style=[{painting},'']"], tmp_path)
    assert _error_lines(done)[0] == "error: empty file name (style[1])"
    assert not (tmp_path / "store").exists()


def test_preflight_loads_neither_tensorflow_nor_mlflow(tmp_path, photos):
    photo, painting = photos
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from style_exp.app.schema import register_schemas\n"
        "from style_exp.app import preflight\n"
        "from style_exp.app.parse import parse\n"
        "register_schemas()\n"
        f"with initialize_config_dir(config_dir={str(PROJECT / 'conf')!r}, version_base='1.3'):\n"
        f"    cfg = compose(config_name='config', overrides=['content={photo}', "
        f"'style={painting}', 'tracking.uri=sqlite:///{tmp_path}/m.db'])\n"
        "plan = preflight.check(parse(cfg))\n"
        "assert plan.tile == 0 and plan.peak_bytes > 0\n"
        "print(*sorted({name.split('.')[0] for name in sys.modules}))\n")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                            text=True, check=True).stdout.split()
    assert "tensorflow" not in loaded and "mlflow" not in loaded


def test_tracking_problems_are_named(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connection refused
    file_as_folder = tmp_path / "afile"
    file_as_folder.write_text("x")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is no database " * 100)
    cases = [
        (f"http://127.0.0.1:{port}", 1, f"(http://127.0.0.1:{port})"),
        (f"sqlite:///{file_as_folder}/mlflow.db", 2,
         f"error: the tracking store's folder {file_as_folder} is a file"),
        (f"sqlite:///{corrupt}", 1, f"file is not a database ({corrupt})"),
    ]
    for uri, code, text in cases:
        started = time.perf_counter()
        done = run_cli([f"tracking.uri={uri}", "size=32", "iterations=1"], tmp_path)
        assert done.returncode == code and text in _error_lines(done)[0], done.stderr
        assert time.perf_counter() - started < 15


def test_a_run_that_does_not_fit_in_memory_is_refused_up_front(tmp_path, photos):
    photo, painting = photos
    done = run_cli([f"content={photo}", f"style={painting}", "size=40000",
                    f"tracking.uri={store_uri(tmp_path)}"], tmp_path)
    assert done.returncode == 1
    what, hint = _error_lines(done)
    assert what.startswith("error: not enough memory: the run needs about ")
    assert what.endswith("(size=40000)") and "available" in what
    assert hint.startswith("hint: size=")
    # precision=auto runs bfloat16 already where the CPU has it; elsewhere it is suggested
    assert ("precision=bfloat16 with size=" in hint) is (host_precision("auto") == "float32")


def _only_run(tmp_path):
    client = MlflowClient(store_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("style_exp").experiment_id])
    return run


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGTERM, "SIGTERM"),
                                              (signal.SIGHUP, "SIGHUP"),
                                              (signal.SIGINT, "Ctrl-C")])
def test_signals_stop_like_ctrl_c(tmp_path, photos, signum, name):
    process = start_endless_run(tmp_path, photos)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines() == [
        line for line in stderr.strip().splitlines() if line.startswith(f"stopped by {name}")]
    assert f"best image so far in {tmp_path / 'out' / 'output.png'}" in stderr
    assert (tmp_path / "out" / "output.png").is_file()
    run = _only_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "interrupted"


def _handles(pid: int, signum: int) -> bool:
    """Whether the process still has a handler of its own for the signal (SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # it has ended
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines()
                  if line.startswith("SigCgt:"))
    return bool(caught >> (signum - 1) & 1)


def test_a_stop_python_dropped_prints_no_traceback_but_other_lost_errors_do():
    """A signal landing in a ``__del__`` or weakref callback has its exception dropped by
    Python with an "Exception ignored" traceback (CI: a SIGTERM test's console); that stop
    was recorded, so it is not shown, while any other dropped exception still is."""
    code = """if True:
        import signal
        from style_exp.engine import stopping
        class Dropping:
            def __init__(self, error): self.error = error
            def __del__(self): raise self.error
        stopping.quiet_lost_stops()
        Dropping(stopping.request(signal.SIGTERM))
        Dropping(ValueError("a real loss"))
        stopping.raise_if_requested()
    """
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                          text=True, timeout=60)
    assert "ValueError: a real loss" in done.stderr
    assert "Exception ignored" in done.stderr and done.stderr.count("Exception ignored") == 1
    assert done.stderr.rstrip().endswith("style_exp.engine.stopping.Terminated: SIGTERM")  # raised


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_ends_the_process_at_once(tmp_path, photos, signum):
    """The first signal starts the orderly stop (best image, MLflow run KILLED); a second,
    sent once the first is being handled, ends the process by the signal's own default
    action instead of waiting for that. The run the killed process leaves RUNNING is then
    reaped like any dead run, so it is not left RUNNING."""
    process = start_endless_run(tmp_path, photos)
    assert _handles(process.pid, signum)
    process.send_signal(signum)
    while process.poll() is None and _handles(process.pid, signum):
        time.sleep(0.005)  # until the handler has run (and given the signal back)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    # killed by it: the shell's exit status 128 + signum (seen once in CI: -6, SIGABRT)
    assert process.returncode == -signum, stderr[-3000:]
    assert runs.main(["reap", "--tracking-uri", store_uri(tmp_path)]) == 0
    assert _only_run(tmp_path).info.status == "FAILED"


def test_full_error_shows_the_traceback_instead(tmp_path):
    """``HYDRA_FULL_ERROR=1`` trades the one-line error for Python's traceback."""
    done = run_cli(["size=0", f"tracking.uri={store_uri(tmp_path)}"], tmp_path,
                   HYDRA_FULL_ERROR="1")
    assert done.returncode != 0
    assert "Traceback (most recent call last):" in done.stderr
    assert done.stderr.rstrip().endswith("ConfigError: must be positive, got 0 (size)")
    assert not any(line.startswith(("error: ", "hint: ")) for line in done.stderr.splitlines())


# run.py in this interpreter, noting the allocator settings in its environment at the
# moment TensorFlow starts loading (they take effect only if set by then), printed at exit.
ALLOCATOR_PROBE = """
import atexit, json, os, runpy, sys
keys, seen = json.loads(sys.argv.pop(1)), {}

def note(event, args):
    if event == "import" and args[0] == "tensorflow" and not seen:
        seen.update({key: os.environ.get(key) for key in keys})

sys.addaudithook(note)
atexit.register(lambda: print("allocator", json.dumps(seen)))
sys.argv[0] = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python run.py` has it
runpy.run_path(sys.argv[0], run_name="__main__")
"""
TILED_ALLOCATOR = {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1",
                   "MALLOC_MMAP_THRESHOLD_": str(memory.MMAP_THRESHOLD),
                   FROZEN_WEIGHTS_ENV: "0"}


@pytest.mark.parametrize("tiles", [64, 0])
def test_allocator_settings_only_for_tiled_runs(tmp_path, photos, tiles):
    """A tiled run (80 px in tiles of 64) has the allocator settings of
    ``memory.configure_for_tiles`` (and oneDNN's filter cache off) before TensorFlow loads;
    an untiled run keeps TensorFlow's defaults, which are faster for it. Either has XLA's
    persistent cache in the project's cache folder."""
    photo, painting = photos
    env = {key: value for key, value in cli_env().items()
           if key not in TILED_ALLOCATOR and key != "TF_XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATOR_PROBE, json.dumps([*TILED_ALLOCATOR, "TF_XLA_FLAGS"]),
         str(PROJECT / "run.py"), f"content={photo}", f"style={painting}", "size=80",
         f"tiles={tiles}", "iterations=1", "progress=false",
         f"tracking.uri={store_uri(tmp_path)}", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.split("allocator ")[-1])
    assert seen.pop("TF_XLA_FLAGS") == f"{XLA_CACHE_FLAG}={default_cache_dir() / 'xla'}"
    assert seen == (TILED_ALLOCATOR if tiles else dict.fromkeys(TILED_ALLOCATOR))


def test_xla_cache_keeps_the_users_flags():
    own = f"{XLA_CACHE_FLAG}=/elsewhere"
    assert with_xla_cache(f"--tf_xla_auto_jit=2 {own}") == f"--tf_xla_auto_jit=2 {own}"
    added = with_xla_cache("--tf_xla_auto_jit=2")
    assert added.startswith(f"--tf_xla_auto_jit=2 {XLA_CACHE_FLAG}=")
