"""analogff sweep: grids, parallel cells, resume, failed cells, bad input, and a real local Ray cluster."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analogff import cli
from analogff.sweep import GridError, load_grid_file, parse_grid

TINY = ["--train-limit", "500", "--test-limit", "200", "--epochs", "1", "--hidden", "50", "--drift-times", "",
        "--methods", "digital_ff"]


def rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "summary.csv").open()))


def test_parse_grid_values_and_lists():
    g = parse_grid(["device=ecram,pcm", "seed=0,1", "ff.lr=1e-3,3e-4", "hidden=[[500,500],[1000]]", "ff-loss=hinton",
                    "analog_update=sgd,adam", "adc_bits=6,8"])
    assert g == {"device": ["ecram", "pcm"], "seed": [0, 1], "ff.lr": [1e-3, 3e-4], "hidden": [[500, 500], [1000]],
                 "ff.loss": ["hinton"], "analog_update": ["sgd", "adam"], "adc_bits": [6, 8]}


@pytest.mark.parametrize("items, words", [
    (["colour=red"], "unknown sweep axis"),
    (["seed"], "KEY=V1,V2"),
    (["seed=0,,1"], "empty value"),
    (["seed=a"], "integer"),
    (["ff.loss=squared"], "hinton"),
    (["hidden=[[1],"], "JSON"),
    (["seed=0", "seed=1"], "twice"),
])
def test_bad_grid_items(items, words):
    with pytest.raises(GridError, match=words):
        parse_grid(items)


def test_grid_file(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text('seed = [0, 1]\n"ff.loss" = ["symba", "hinton"]\n[base]\nepochs = 2\n')
    grid, base = load_grid_file(str(f))
    assert grid == {"seed": [0, 1], "ff.loss": ["symba", "hinton"]} and base == {"epochs": 2}
    bad = tmp_path / "b.json"
    bad.write_text('{"seed": 3}')
    with pytest.raises(GridError, match="non-empty list"):
        load_grid_file(str(bad))


@pytest.mark.parametrize("argv, words", [
    (["--grid", "nope=1"], "unknown sweep axis"),
    (["--grid", "device=ecram,pcmm"], "reram_sb"),
    (["--grid", "seed=0", "--ray", "127.0.0.1:1"], "cannot reach"),
    (["--grid", "seed=0", "--ray", "nowhere"], "HOST:PORT"),
    (["--grid", "seed=0", "--recipe", "nope"], "quick"),
    (["--grid-file", "/nowhere.toml"], "no such file"),
    ([], "no sweep axes"),
    (["--grid", "seed=0", "--jobs", "0"], "--jobs"),
])
def test_bad_sweep_input_one_line_nothing_written(tmp_path, capsys, argv, words):
    if "--ray" in argv:
        pytest.importorskip("ray")
    out = tmp_path / "never"
    try:
        code = cli.main(["sweep", *TINY, *argv, "--out", str(out)])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


def test_parallel_sweep_resume_and_a_failing_cell(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["sweep", *TINY, "--grid", "seed=0,1", "ff.loss=symba,hinton", "--jobs", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    r = rows(out)
    assert len(r) == 4 and {x["status"] for x in r} == {"done"}
    assert {(x["seed"], x["ff.loss"]) for x in r} == {("0", "symba"), ("0", "hinton"), ("1", "symba"), ("1", "hinton")}
    for cell in {x["cell"] for x in r}:
        res = json.loads((out / cell / "results.json").read_text())
        assert res["config"]["out"] == str(out / cell)
    assert "## Accuracy and energy per sample" in (out / "report.md").read_text()
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    # the same command again: every cell is skipped, nothing rerun
    assert cli.main(argv) == 0
    assert {x["status"] for x in rows(out)} == {"skipped"}
    assert stamp == {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    # another base config into the same directory: one line, nothing run
    capsys.readouterr()
    assert cli.main([*argv[:-2], "--epochs", "2", "--out", str(out)]) == 2
    assert "another config" in capsys.readouterr().err


def test_failing_cell_is_recorded_and_others_finish(tmp_path, monkeypatch):
    from analogff import data

    real = data.load_dataset

    def flaky(name, split):  # fashion_mnist "missing" in this test
        if name == "fashion_mnist":
            raise data.DatasetMissingError("Fashion-MNIST not found (test)")
        return real(name, split)

    monkeypatch.setattr(data, "load_dataset", flaky)
    out = tmp_path / "grid"
    code = cli.main(["sweep", *TINY, "--grid", "dataset=mnist,fashion_mnist", "--out", str(out)])  # in-process
    assert code == 1
    by = {r["dataset"]: r for r in rows(out)}
    assert by["mnist"]["status"] == "done" and by["fashion_mnist"]["status"] == "failed"
    assert "Fashion-MNIST not found" in by["fashion_mnist"]["error"] and "\n" not in by["fashion_mnist"]["error"]
    assert not (out / by["fashion_mnist"]["cell"] / "results.json").exists()
    assert (out / by["mnist"]["cell"] / "results.json").exists()
    assert "## Failed cells" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# a real Ray cluster: a head and one worker node on 127.0.0.1, dashboard off
# ---------------------------------------------------------------------------------------------
_WORKER = """
import sys, types
import ray.scripts.scripts as s
# Ray replaces a node IP of 127.0.0.1 by the host's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
# and with that setting its CLI refuses a second node; only that check sees the cluster flag on.
proxy = types.ModuleType("ray_constants")
proxy.__dict__.update(vars(s.ray_constants))
proxy.ENABLE_RAY_CLUSTER = True
s.ray_constants = proxy
sys.exit(s.main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    pytest.importorskip("ray")
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the ray command is not installed")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--include-dashboard=false", *common], env=env, check=True, capture_output=True, timeout=180)
        worker = tmp_path / "ray_worker.py"
        worker.write_text(_WORKER)
        subprocess.run([sys.executable, str(worker), "start", "--address", address, *common], env=env, check=True,
                       capture_output=True, timeout=180)
        yield address
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=180)


def test_sweep_on_a_real_local_ray_cluster(ray_cluster, tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # the cluster listens on the loopback only
    ss = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    for line in ss.splitlines():
        if "gcs_server" in line or "raylet" in line:
            assert "127.0.0.1" in line, line
    out = tmp_path / "grid"
    t0 = time.perf_counter()
    code = cli.main(["sweep", *TINY, "--grid", "seed=0,1", "--ray", ray_cluster, "--out", str(out)])
    assert code == 0, f"sweep failed after {time.perf_counter() - t0:.0f} s"
    r = rows(out)
    assert [x["status"] for x in r] == ["done", "done"]
    assert len({x["node"] for x in r}) == 2  # both nodes, head and worker, ran a cell
    for x in r:
        res = json.loads((out / x["cell"] / "results.json").read_text())
        assert res["config"]["out"] == str(out / x["cell"]) and res["config"]["seed"] == int(x["seed"])
        assert (out / x["cell"] / "metrics.csv").is_file()
    assert not ray.is_initialized()
    # resume through Ray: nothing to run
    assert cli.main(["sweep", *TINY, "--grid", "seed=0,1", "--ray", ray_cluster, "--out", str(out)]) == 0
    assert {x["status"] for x in rows(out)} == {"skipped"}


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_keys = st.sampled_from(["device", "seed", "ff.lr", "ff-loss", "hidden", "adc_bits", "colour", "", "=", "methods"])
_vals = st.one_of(st.text(max_size=10), st.sampled_from(["0,1", "ecram,pcm", "[[1],[2]]", "[", ",", "nan", "hinton"]))


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.tuples(_keys, st.sampled_from(["=", ""]), _vals).map("".join), max_size=4))
def test_fuzzed_grids_parse_or_fail_in_one_line(items):
    try:
        parse_grid(items)
    except GridError as exc:
        assert len(str(exc).splitlines()) <= 1 or "\n" in "".join(items)
