"""The analogff command: flags from the config tree, recipes, one-line errors (fuzzed), a tiny run,
report and the version string."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analogff
from analogff import cli
from analogff.options import config_argv, config_from_dict, make_config, options

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-limit", "500", "--test-limit", "200", "--epochs", "1", "--hidden", "50", "--drift-times", ""]


def config_of(capsys, *argv: str) -> dict:
    assert cli.main(["run", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_ff_option_is_a_flag_and_lands_in_the_config(capsys):
    from dataclasses import fields

    from analogff.ff import FFConfig

    keys = set(options())
    for f in fields(FFConfig):
        if f.name not in ("seed", "engine", "analog_update"):  # set from the experiment's fields
            assert f"ff.{f.name}" in keys
    cfg = config_of(capsys, "--ff.loss", "hinton", "--ff-theta", "50", "--ff.shift", "2", "--no-ff.analog-bias",
                    "--ff.betas", "0.8,0.99", "--seed", "3", "--analog-update", "sgd")
    assert cfg["ff"]["loss"] == "hinton" and cfg["ff"]["theta"] == 50.0 and cfg["ff"]["shift"] == 2
    assert cfg["ff"]["analog_bias"] is False and cfg["ff"]["betas"] == [0.8, 0.99]
    assert cfg["ff"]["seed"] == 3 and cfg["ff"]["analog_update"] == "sgd"  # one source for shared fields


def test_legacy_flags_still_work(capsys):
    cfg = config_of(capsys, "--device", "devices/pcm.toml", "--epochs", "5", "--methods", "analog_ff,digital_bp",
                    "--analog-update", "momentum", "--ff-lr-analog", "0.01", "--adc-bits", "6", "--hidden", "100",
                    "100", "--out", "/tmp/never-written")
    assert cfg["device"] == "devices/pcm.toml" and cfg["epochs"] == 5 and cfg["methods"] == ["analog_ff", "digital_bp"]
    assert cfg["analog_update"] == "momentum" and cfg["ff_lr_analog"] == 0.01 and cfg["adc_bits"] == 6
    assert cfg["hidden"] == [100, 100] and cfg["out"] == "/tmp/never-written"
    assert not Path("/tmp/never-written").exists()


def test_default_device_is_the_name_ecram(capsys):
    assert config_of(capsys)["device"] == "ecram"


def test_recipes_and_explicit_flags_override(capsys):
    assert config_of(capsys, "--recipe", "quick")["epochs"] == 1
    full = config_of(capsys, "--recipe", "full")
    assert full["epochs"] == 60 and full["ff"]["shift"] == 2
    assert config_of(capsys, "--recipe", "full", "--epochs", "2", "--ff.shift", "0")["epochs"] == 2
    rule = config_of(capsys, "--recipe", "rule-sgd")
    assert rule["analog_update"] == "sgd" and rule["ff_lr_analog"] == 0.1 and rule["methods"] == ["analog_ff"]


def test_ff_lr_sets_both_rates_unless_one_is_explicit(capsys):
    cfg = config_of(capsys, "--ff.lr", "3e-4")
    assert cfg["ff_lr_analog"] == cfg["ff_lr_digital"] == 3e-4
    cfg = config_of(capsys, "--ff.lr", "3e-4", "--ff-lr-digital", "1e-3")
    assert cfg["ff_lr_analog"] == 3e-4 and cfg["ff_lr_digital"] == 1e-3


def test_config_file_and_results_json_rerun(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text('epochs = 4\n"ff.loss" = "hinton"\n[ff]\ntheta = 20.0\n')
    cfg = config_of(capsys, "--config", str(f), "--seed", "2")
    assert cfg["epochs"] == 4 and cfg["ff"]["loss"] == "hinton" and cfg["ff"]["theta"] == 20.0 and cfg["seed"] == 2
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"config": cfg, "methods": {}}))
    assert config_of(capsys, "--config", str(res)) == cfg
    # a results.json written before an FFConfig field existed reruns (and reports) as it ran
    from analogff.options import FF_LEGACY
    from analogff.report import command

    old = json.loads(json.dumps(cfg))
    for k in FF_LEGACY:
        old["ff"].pop(k)
    res.write_text(json.dumps({"config": old, "methods": {}}))
    rerun = config_of(capsys, "--config", str(res))
    assert {k: rerun["ff"][k] for k in FF_LEGACY} == FF_LEGACY
    assert "--ff.analog-reads 1" in command({"config": old}, res)


def test_config_argv_round_trip():
    cfg = make_config({"epochs": 2, "ff.loss": "hinton", "ff.head": False, "ff.negatives": "random",
                       "hidden": [10, 20], "adc_bits": 6, "drift_times": [], "device": "pcm", "out": "/tmp/x"})
    argv = config_argv(cfg)
    args = cli.run_parser().parse_args(argv)
    again = cli.run_configs(args)[0]
    assert again == cfg


@pytest.mark.parametrize("argv, words", [
    (["--recipe", "fast"], "quick"),
    (["--device", "pcmm"], "reram_sb"),
    (["--device", "devices/nope.toml"], "not found"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "zero"], "--epochs"),
    (["--ff.loss", "squared"], "hinton"),
    (["--methods", "analog_ff,quantum"], "quantum"),
    (["--no-ff.head"], "head"),  # hard negatives from the head need the head: FFConfig's own check
    (["--ff.analog-init-range", "2"], "analog_init_range"),
    (["--drift-times", "1,-5"], "drift"),
    (["--config", "/nowhere.toml"], "no such file"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, words):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        sys.exit(cli.main(["run", *argv, "--out", str(out)]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


# every flag name the parser knows, plus some junk
_FLAGS = sorted({s for a in cli.run_parser()._actions for s in a.option_strings if s not in ("-h", "--help")})
_tokens = st.one_of(st.sampled_from(_FLAGS), st.text(max_size=8),
                    st.sampled_from(["0", "-1", "1e9", "nan", "inf", "none", "true", "pcm", "ecram", "x,y", ",", "",
                                     "quick", "hinton", "1,2", "--", "-", "=", "[1]", "\n", "é"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(_tokens, max_size=8))
def test_fuzzed_flags_never_crash(argv, capsys, tmp_path_factory):
    """Any argv: a config (exit 0) or one line on stderr and exit 2; never a traceback, nothing written."""
    out = tmp_path_factory.mktemp("fuzz")
    try:
        code = cli.main(["run", *argv, "--print-config", "--out", str(out / "o")])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert code in (0, 2), (argv, code, captured.err)
    if code == 2:
        assert len(captured.err.strip().splitlines()) == 1, (argv, captured.err)
        assert "Traceback" not in captured.err
    assert not (out / "o").exists()


@pytest.mark.parametrize("name", sorted(cli.BENCHMARKS))
def test_every_benchmark_of_analogff_bench_exists_and_answers_help(name, capsys):
    assert cli.main(["bench", name, "--help"]) == 0  # the script's own argparse help
    assert f"usage: {cli.BENCHMARKS[name]}" in capsys.readouterr().out


def test_help_of_every_command_is_complete(capsys):
    for cmd in ("run", "sweep", "report", "figures", "data", "bench"):
        with pytest.raises(SystemExit) as exc:
            cli.main([cmd, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert f"analogff {cmd}" in text
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    for flag in ("--recipe", "--device", "--ff.loss", "--ff-loss", "--analog-update", "--resume", "--print-config"):
        assert flag in text
    assert "SymBa scale" in text  # FFConfig's #: comments are the help


def test_version_is_one_string():
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)
    assert analogff.__version__ == version
    latest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
    assert latest == version


def test_tiny_run_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", *TINY, "--methods", "digital_ff,analog_ff", "--device", "idealized",
                     "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["ff"]["loss"] == "symba" and res["device_profile"]["name"] == "idealized"
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| analog FF | idealized |" in text and "digital FF" in text and "analogff run" in text
    assert "--device idealized" in text
    # the report's command rebuilds the same config
    cmd = shlex.split(re.search(r"`(analogff run [^`]*)`", text).group(1))[2:]
    args = cli.run_parser().parse_args(cmd)
    assert cli.run_configs(args)[0] == config_from_dict(res["config"])
    # a second run into the same directory is refused in one line
    assert cli.main(["run", *TINY, "--methods", "digital_ff", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_report_bad_input(capsys, tmp_path):
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_console_script_and_module_entry_points():
    exe = Path(sys.executable).parent / "analogff"
    if exe.exists():
        r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and analogff.__version__ in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "mnist_analog.py"), "--epochs", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_pip_install_outside_the_checkout(tmp_path):
    """A wheel of the checkout, installed into a fresh venv and run from elsewhere, finds its profiles."""
    import site
    import sysconfig
    import venv

    import shutil

    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "build", "*.egg-info", ".hypothesis", ".pytest_cache", "__pycache__", "notebooks"))
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        str(src), "-w", str(wheels)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    env_dir = tmp_path / "v"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # torch, aihwkit, ... from this environment (after the venv's own site-packages, so the wheel wins)
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "zz_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    wheel = next(wheels.glob("analogff-*.whl"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(purelib),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import analogff, sys; from analogff import cli; from analogff.devices import load_device; "
            "assert analogff.__file__.startswith(sys.argv[1]), analogff.__file__; "
            "print(analogff.__version__, load_device('pcm').name, load_device('devices/ecram.toml').name); "
            "sys.exit(cli.main(['run', '--recipe', 'quick', '--print-config']))")
    r = subprocess.run([str(py), "-c", code, str(purelib)], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"{analogff.__version__} pcm ecram") and '"epochs": 1' in r.stdout


def test_readme_is_a_manual_whose_tables_are_report_output(monkeypatch):
    """README <= 12 KB; its result tables (and docs/benchmarks.md's generated ones) are exactly what
    ``analogff report --update`` writes from the result files named in each block."""
    from analogff.report import BLOCK, update_blocks

    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    assert BLOCK.search(readme)
    for doc in ("README.md", "docs/benchmarks.md", "docs/networks.md"):
        text = (ROOT / doc).read_text()
        assert update_blocks(text) == text, f"{doc}: run analogff report --update {doc}"
    for cmd in ("make demo", "make test", "analogff sweep", "--ray", "## Update rules", "docs/ARCHITECTURE.md",
                "docs/energy.md", "docs/benchmarks.md"):
        assert cmd in readme
