"""The command line as a user meets it: one-line errors, exit codes, signals, quiet start-up."""

import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import PROJECT, cli_env, gradient_image, run_cli, stripes_image, write_image
from mlflow.tracking import MlflowClient

from style_exp.device import host_precision


@pytest.fixture
def photos(tmp_path):
    return (write_image(tmp_path / "photo.png", gradient_image(40, 56)),
            write_image(tmp_path / "painting.jpg", stripes_image(48, 48)))


def _store(tmp_path):
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


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
    done = run_cli([*args, f"tracking.uri={_store(tmp_path)}"], tmp_path)
    assert done.returncode == 2
    assert _error_lines(done)[0] == line
    assert not (tmp_path / "store").exists()  # no MLflow store, so no run either


def test_input_files_are_checked_before_tensorflow_and_any_run(tmp_path, photos):
    photo, painting = photos
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cases = {
        f"content={tmp_path / 'nope.jpg'}": f"error: image file not found ({tmp_path}/nope.jpg)",
        f"content={broken}": f"({broken})",
        f"content='{tmp_path / 'phötö ü.jpg'}'": f"not found ({tmp_path / 'phötö ü.jpg'})",
    }
    for content, line in cases.items():
        started = time.perf_counter()
        done = run_cli([content, f"style={painting}", f"tracking.uri={_store(tmp_path)}"],
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
        "from style_exp.config import register_schemas\n"
        "from style_exp import preflight\n"
        "register_schemas()\n"
        f"with initialize_config_dir(config_dir={str(PROJECT / 'conf')!r}, version_base='1.3'):\n"
        f"    cfg = compose(config_name='config', overrides=['content={photo}', "
        f"'style={painting}', 'tracking.uri=sqlite:///{tmp_path}/m.db'])\n"
        "preflight.check(cfg)\n"
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
                    f"tracking.uri={_store(tmp_path)}"], tmp_path)
    assert done.returncode == 1
    what, hint = _error_lines(done)
    assert what.startswith("error: not enough memory: the run needs about ")
    assert what.endswith("(size=40000)") and "available" in what
    assert hint.startswith("hint: size=")
    # precision=auto runs bfloat16 already where the CPU has it; elsewhere it is suggested
    assert ("precision=bfloat16 with size=" in hint) is (host_precision("auto") == "float32")


def _start(tmp_path, photos, *extra):
    """A long run on tiny images, returned once it is optimising."""
    photo, painting = photos
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "run.py"), f"content={photo}", f"style={painting}",
         "size=32", "iterations=100000", "tracking.checkpoint_every=2", "progress=false",
         f"tracking.uri={_store(tmp_path)}", f"hydra.run.dir={tmp_path / 'out'}", *extra],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "out" / "checkpoints" / "000002.png").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    return process


def _only_run(tmp_path):
    client = MlflowClient(_store(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("style_exp").experiment_id])
    return run


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGTERM, "SIGTERM"),
                                              (signal.SIGHUP, "SIGHUP"),
                                              (signal.SIGINT, "Ctrl-C")])
def test_signals_stop_like_ctrl_c(tmp_path, photos, signum, name):
    process = _start(tmp_path, photos)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert stderr.strip().splitlines() == [
        line for line in stderr.strip().splitlines() if line.startswith(f"stopped by {name}")]
    assert f"best image so far in {tmp_path / 'out' / 'output.png'}" in stderr
    assert (tmp_path / "out" / "output.png").is_file()
    run = _only_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "interrupted"
