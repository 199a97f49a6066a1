"""The main job: files and schema, one-line errors that write nothing, resume == uninterrupted."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from analogff.experiment import ExperimentConfig, main, run_one, write_atomic

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden=[32], epochs=2, train_limit=500, test_limit=200, drift_times=[1.0, 86400.0],
             engine="torch", device=str(ROOT / "devices" / "reram_sb.toml"))
ARGS = ["--hidden", "32", "--epochs", "2", "--train-limit", "500", "--test-limit", "200",
        "--drift-times", "1,86400,3600", "--engine", "torch"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    code = main([*ARGS, "--methods", "analog_ff,digital_ff,digital_bp,analog_bp",
                 "--device", str(ROOT / "devices" / "reram_sb.toml"), "--out", str(out)])
    assert code == 0
    return out


def test_results_schema_and_metrics(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    assert res["dataset"] == "mnist" and res["config"]["epochs"] == 2
    assert res["device_profile"]["name"] == "reram_sb"
    assert set(res["methods"]) == {"analog_ff", "digital_ff", "digital_bp", "analog_bp"}
    for name, m in res["methods"].items():
        assert 0.0 <= m["test_accuracy"] <= 1.0
        assert m["train_energy_per_sample_J"] > 0 and m["inference_energy_per_sample_J"] > 0
        assert abs(sum(m["energy_breakdown_J"].values()) - m["train_energy_per_sample_J"]) \
            <= 1e-9 * m["train_energy_per_sample_J"]
        assert isinstance(m["counters"], dict) and isinstance(m["drift"], dict)
    ff, bp = res["methods"]["analog_ff"], res["methods"]["analog_bp"]
    assert ff["counters"]["backward_adc_conversions"] == 0 and ff["energy_breakdown_J"]["backward_adc"] == 0
    assert bp["counters"]["backward_adc_conversions"] > 0 and bp["energy_breakdown_J"]["backward_adc"] > 0
    assert ff["counters"]["update_pulses"] > 0
    # ReRAM's measured model (Wan et al. 2022) exists at 1 s, 1 day and 2 days only
    assert set(ff["drift"]) == {"1", "86400", "unsupported"} and "3600" in ff["drift"]["unsupported"]
    assert 0 <= ff["drift"]["86400"] <= 1
    assert res["methods"]["digital_ff"]["counters"]["adc_conversions"] == 0
    # training counts are training only; evaluation during training is counted and priced apart
    from analogff.reference import BPNet

    assert res["methods"]["digital_bp"]["counters"] == BPNet([784, 32, 10]).training_counts(500, 100).scaled(2).as_dict()
    reads = ff["analog_reads"]  # each pass reads the array this many times (the rule's default: adam, 2)
    assert res["config"]["ff"]["analog_reads"] is None and reads == 2
    assert ff["counters"]["mvms"] == 3 * 500 * 2 * reads  # neutral + positive + negative pass, 1 layer, 2 epochs
    for name, m in res["methods"].items():
        assert m["eval_samples"] > 0 and m["eval_energy_per_sample_J"] > 0, name
        assert m["eval_counters"]["digital_ops"] > 0 and m["eval_energy_J"] > 0
    # per epoch: goodness (the 200 images once, each label row 32 times: label_readout="differential"),
    # then the head's neutral pass
    assert ff["eval_counters"]["mvms"] == 2 * reads * (200 + 10 * 32 + 200) and ff["eval_samples"] == 2 * 2 * 200
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 4 * 2 and {r["method"] for r in rows} == set(res["methods"])
    # one linear probe per FF layer (here 1 layer), measured on the test set, outside the bill
    for name in ("analog_ff", "digital_ff"):
        m = res["methods"][name]
        assert m["variant"] == "supervised" and m["predict"] == "goodness"
        assert len(m["layer_probe_accuracy"]) == 1 and 0.1 < m["layer_probe_accuracy"][0] <= 1.0, m


def test_hidden_nxk_and_variant_options_one_line_errors():
    from analogff.experiment import ConfigError, readout
    from analogff.options import OptionError, options

    assert options()["hidden"].parse("500x8") == [500] * 8
    assert options()["hidden"].parse("784,500x2,10") == [784, 500, 500, 10]
    with pytest.raises(OptionError, match="repeats a width 0 times"):
        options()["hidden"].parse("500x0")
    assert readout(ExperimentConfig()) == "goodness"
    assert readout(ExperimentConfig(variant="unsupervised")) == "softmax"
    assert readout(ExperimentConfig(variant="recurrent")) == "goodness"
    with pytest.raises(ConfigError, match="variant.*one of supervised, recurrent, unsupervised"):
        ExperimentConfig(variant="lateral").validate()
    with pytest.raises(ConfigError, match="predict.*softmax or auto"):
        ExperimentConfig(variant="unsupervised", predict="goodness").validate()
    with pytest.raises(ConfigError, match="architecture.*--variant unsupervised"):
        ExperimentConfig(architecture="hinton_local").validate()
    with pytest.raises(ConfigError, match="probe_samples"):
        ExperimentConfig(probe_samples=-1).validate()
    from analogff.ff import FFConfig

    for field, value in (("dropout", 0.1), ("collaborative", True)):
        with pytest.raises(ConfigError, match=f"ff.{field}.*supervised net's step"):
            ExperimentConfig(variant="recurrent", ff=FFConfig(**{field: value})).validate()


def test_refuses_to_overwrite_without_resume(run_dir, capsys):
    before = (run_dir / "results.json").read_bytes()
    assert main([*ARGS, "--methods", "digital_bp", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and len(err.splitlines()) == 1
    assert (run_dir / "results.json").read_bytes() == before


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "zero"], "--epochs"),
    (["--methods", "analog_ff,quantum"], "quantum"),
    (["--dataset", "cifar"], "--dataset"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--drift-times", "1,-5"], "drift"),
])
def test_bad_flag_one_line_error_writes_nothing(tmp_path, capsys, argv, words):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert not out.exists()


def test_missing_or_broken_profile_one_line_error(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["--device", "devices/nope.toml", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "devices/nope.toml" in err and "not found" in err
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "devices" / "ecram.toml").read_text().replace('"EcRamPreset"', '"Nope"'))
    assert main(["--device", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "aihwkit.preset" in err
    assert not out.exists()


def test_a_bad_kernel_cache_limit_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """$ANALOGFF_KERNEL_CACHE_MB is read when the first kernel compiles, deep in training; a bad
    value must stop the run before its directory (the resume state) is written."""
    monkeypatch.setenv("ANALOGFF_KERNEL_CACHE_MB", "lots")
    out = tmp_path / "never"
    assert main([*ARGS, "--methods", "analog_ff", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ANALOGFF_KERNEL_CACHE_MB='lots'" in err
    assert not out.exists()


def _comparable(res: dict) -> dict:
    out = {}
    for name, m in res["methods"].items():
        out[name] = {k: v for k, v in m.items() if k not in ("wall_time_s", "epochs")}
        out[name]["epochs"] = [{k: v for k, v in e.items() if "time" not in k} for e in m["epochs"]]
    return out


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    cfg = ExperimentConfig(**SMALL, methods=["digital_bp", "analog_ff", "digital_ff"], out=str(tmp_path / "a"))
    full = run_one(cfg)
    cut = replace(cfg, out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        run_one(cut, _interrupt_after=("analog_ff", 1))
    assert not (tmp_path / "b" / "results.json").exists()  # nothing half-written
    assert (tmp_path / "b" / "state" / "analog_ff.ckpt").exists()
    resumed = run_one(cut, resume=True)
    assert _comparable(resumed) == _comparable(full)


def test_sweep_writes_one_result_per_profile_and_summary(tmp_path):
    out = tmp_path / "sweep"
    code = main(["--hidden", "16", "--epochs", "1", "--train-limit", "300", "--test-limit", "100",
                 "--methods", "analog_ff", "--drift-times", "", "--out", str(out),
                 "--device", str(ROOT / "devices" / "idealized.toml"), str(ROOT / "devices" / "ecram.toml")])
    assert code == 0
    assert (out / "idealized" / "results.json").exists() and (out / "ecram" / "results.json").exists()
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["device"] for r in rows} == {"idealized", "ecram"}


def test_write_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_atomic(target, "old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_default_out_never_overwrites(tmp_path, monkeypatch):
    from analogff.experiment import _default_out

    monkeypatch.chdir(tmp_path)
    assert _default_out("runs/x", resume=False) == "runs/x"
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert _default_out("runs/x", resume=False) == "runs/x_2"
    assert _default_out("runs/x", resume=True) == "runs/x"
    (tmp_path / "runs" / "x_2").mkdir()
    assert _default_out("runs/x", resume=True) == "runs/x_2"


_MALLOC_PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys
    import torch
    from analogff.experiment import keep_freed_memory

    class MallInfo2(ctypes.Structure):  # glibc >= 2.33
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        alive = [torch.empty(1 << 18, dtype=torch.float32).fill_(1.0) for _ in range(24)]  # 24 x 1 MiB
        del alive
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    before = libc.mallinfo2()
    x = torch.empty(5 << 20, dtype=torch.float32).fill_(1.0)  # 20 MiB
    mmapped = libc.mallinfo2().hblkhd - before.hblkhd
    del x
    kept = libc.mallinfo2().fordblks - before.fordblks
    for _ in range(3):
        faults()
    print(mmapped, kept, min(faults() for _ in range(5)))
    """
)


def _malloc_probe(case: str) -> tuple[int, int, int]:
    """(bytes mmapped for a 20 MiB array, bytes kept free after it is freed, page faults of the quietest
    of five rounds that allocate and free 24 arrays of 1 MiB) in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE, case], capture_output=True, text=True, check=True)
    mmapped, kept, faults = map(int, out.stdout.split()[-3:])
    return mmapped, kept, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_freed_arrays_without_page_faults():
    """glibc's default hands a 20 MiB array back to the OS when it is freed (its own mmap); after
    keep_freed_memory() it comes from the heap and stays there for reuse. A step's worth of arrays (24 of
    1 MiB, alive together, then freed) then takes (almost) no page faults when allocated again, where
    memory fresh from the OS takes one per 4 KiB page, 6144 per round (glibc's default trims such a
    freed heap top, often every round). Each case runs in its own process (mallopt cannot be undone, and
    the suite's other threads fault too); the quietest of five rounds is compared."""
    twenty_mib = 20 << 20
    mmapped, kept, _ = _malloc_probe("default")
    assert mmapped >= twenty_mib and kept < twenty_mib // 2  # the control
    mmapped, kept, faults = _malloc_probe("keep")
    assert mmapped == 0 and kept > twenty_mib // 2
    assert faults < 24 * (1 << 20) // 4096 // 20


def test_results_record_environment_and_threads(run_dir, tmp_path):
    import torch

    env = json.loads((run_dir / "results.json").read_text())["environment"]
    for key in ("git_commit", "git_dirty", "python", "torch", "aihwkit", "torch_threads", "cpu", "cuda_device",
                "analogff_compile"):
        assert key in env, key
    assert env["torch"] == torch.__version__ and env["aihwkit"] == "1.2.0"
    before = torch.get_num_threads()
    try:
        cfg = ExperimentConfig(**{**SMALL, "epochs": 1}, methods=["digital_bp"], threads=1, out=str(tmp_path / "t"))
        res = run_one(cfg)
        assert torch.get_num_threads() == 1 and res["environment"]["torch_threads"] == 1
        assert res["config"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
    from analogff.experiment import build_parser

    assert build_parser().parse_args(["--threads", "3"]).threads == 3


@pytest.mark.parametrize("argv, field", [
    (["--adc-bits", "1"], "adc_bits=1"),  # was a ZeroDivisionError
    (["--adc-bits", "17"], "adc_bits=17"),
    (["--ff-lr-analog", "nan"], "ff_lr_analog=nan"),
    (["--ff-lr-digital", "-0.001"], "ff_lr_digital=-0.001"),
    (["--ff-lr-analog", "0"], "ff_lr_analog=0.0"),
    (["--batch-size", "100000"], "batch_size=100000"),
    (["--batch-size", "600", "--train-limit", "500"], "batch_size=600"),
])
def test_config_out_of_range_one_line_error_writes_nothing(tmp_path, capsys, argv, field):
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "allowed" in err, err
    assert not out.exists()


def test_validate_names_field_value_and_allowed_range():
    from analogff.experiment import ConfigError

    with pytest.raises(ConfigError, match=r"epochs=0 is not allowed: an integer in 1\.\.100000"):
        ExperimentConfig(epochs=0).validate()
    with pytest.raises(ConfigError, match="bp_lr=inf"):
        ExperimentConfig(bp_lr=float("inf")).validate()
    with pytest.raises(ConfigError, match="adc_bits"):
        run_one(ExperimentConfig(**SMALL, adc_bits=1, out="/nonexistent/never"))
    assert ExperimentConfig().validate() is not None


def test_resume_refuses_a_changed_config_naming_the_field(tmp_path, capsys):
    cfg = ExperimentConfig(**{**SMALL, "epochs": 1}, methods=["digital_bp"], out=str(tmp_path / "r"))
    run_one(cfg)
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    from analogff.experiment import ConfigError

    with pytest.raises(ConfigError, match=r"was run with bp_lr=0\.001; now bp_lr=0\.01"):
        run_one(replace(cfg, bp_lr=1e-2), resume=True)
    with pytest.raises(ConfigError, match=r"ff\.alpha"):
        run_one(replace(cfg, ff=replace(cfg.ff, alpha=1.0)), resume=True)
    with pytest.raises(ConfigError, match="device"):
        run_one(replace(cfg, device=str(ROOT / "devices" / "pcm.toml")), resume=True)
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == before  # nothing written
    run_one(replace(cfg, threads=1), resume=True)  # threads and out may change
    # and from the command line: one line, exit 2
    args = ["--hidden", "32", "--epochs", "1", "--train-limit", "500", "--test-limit", "200", "--drift-times", "1,86400",
            "--methods", "digital_bp", "--device", str(ROOT / "devices" / "reram_sb.toml"), "--out", str(tmp_path / "r")]
    assert main([*args, "--resume"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed=0" in err, err


def test_energy_sensitivity_reprices_a_run_from_its_counters(run_dir, tmp_path):
    import importlib.util

    from analogff.energy import OpCounts

    spec = importlib.util.spec_from_file_location("energy_sensitivity", ROOT / "benchmarks" / "energy_sensitivity.py")
    sens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sens)
    res = json.loads((run_dir / "results.json").read_text())
    for name, m in res["methods"].items():  # as is: the run's own bill
        b = sens.bill(res, name)
        assert b["train_J"] == pytest.approx(m["train_energy_per_sample_J"], rel=1e-9)
        assert b["infer_J"] == pytest.approx(m["inference_energy_per_sample_J"], rel=1e-9)
    af = res["methods"]["analog_ff"]
    assert sens.bill(res, "analog_ff", adc_point="p10")["infer_J"] < af["inference_energy_per_sample_J"]
    assert sens.bill(res, "digital_bp", adc_point="min")["train_J"] == pytest.approx(
        res["methods"]["digital_bp"]["train_energy_per_sample_J"], rel=1e-9)  # no ADC in digital BP
    # the residency rule moves state that streamed from DRAM on chip when the SRAM is big enough
    moved, exact = sens._move_resident(OpCounts(sram_bytes=10, dram_bytes=90), 5 << 20, 16 << 20, 1 << 20)
    assert exact and (moved.sram_bytes, moved.dram_bytes) == (100, 0)
    assert sens.main([str(run_dir), "--out", str(tmp_path)]) == 0
    assert "run as is" in (tmp_path / "energy_sensitivity.md").read_text()
    assert (tmp_path / "figures" / "energy_sensitivity.png").stat().st_size > 0


def test_recurrent_variant_runs_from_the_main_job(tmp_path):
    """--variant recurrent: the label is the net's top layer (dims end with the classes), its
    readout is goodness, and the array still does no transposed MVM."""
    cfg = ExperimentConfig(**{**SMALL, "hidden": [24, 24], "epochs": 1, "train_limit": 300, "test_limit": 100,
                              "device": str(ROOT / "devices" / "ecram.toml")},
                           variant="recurrent", methods=["analog_ff", "digital_ff"], out=str(tmp_path / "r"))
    res = run_one(cfg)
    for name in ("analog_ff", "digital_ff"):
        m = res["methods"][name]
        assert m["variant"] == "recurrent" and m["predict"] == "goodness" and 0 <= m["test_accuracy"] <= 1
        assert m["counters"]["backward_adc_conversions"] == 0
        assert len(m["layer_probe_accuracy"]) == 2  # a probe per hidden layer (not the label layer)
    assert res["methods"]["analog_ff"]["counters"]["adc_conversions"] > 0


def test_unsupervised_variant_reads_its_head_and_runs_the_local_architecture(tmp_path):
    """--variant unsupervised: --predict auto is the head; --architecture builds the named net."""
    base = {**SMALL, "epochs": 1, "train_limit": 200, "test_limit": 100, "drift_times": []}
    res = run_one(ExperimentConfig(**{**base, "hidden": [24, 24, 24]}, variant="unsupervised",
                                   methods=["digital_ff"], out=str(tmp_path / "u")))
    m = res["methods"]["digital_ff"]
    assert m["variant"] == "unsupervised" and m["predict"] == "softmax" and m["test_accuracy_goodness"] is None
    res = run_one(ExperimentConfig(**base, variant="unsupervised", architecture="hinton_local",
                                   methods=["digital_ff"], out=str(tmp_path / "l")))
    assert res["config"]["architecture"] == "hinton_local" and 0 <= res["methods"]["digital_ff"]["test_accuracy"] <= 1


def test_cifar10_main_job_reads_the_users_batches_or_says_where_to_put_them(tmp_path, monkeypatch, capsys):
    """--dataset cifar10: without the batches, one line naming the directory, a failing exit code and
    nothing written; with (small) batches in $ANALOGFF_DATA, FF trains on 3 x 32 x 32 inputs, shifts
    included."""
    from analogff import data
    from analogff.ff import FFConfig
    from test_data import write_cifar

    monkeypatch.setenv("ANALOGFF_DATA", str(tmp_path / "data"))
    data.clear_cache()
    out = tmp_path / "r"
    code = main(["--dataset", "cifar10", "--methods", "digital_ff", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "cifar-10-batches-py" in err and err.count("\n") == 1 and not out.exists()
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", per_batch=20)
    data.clear_cache()
    res = run_one(ExperimentConfig(dataset="cifar10", methods=["digital_ff"], hidden=[16], epochs=1, batch_size=20,
                                   drift_times=[], out=str(out), ff=FFConfig(shift=2)))
    m = res["methods"]["digital_ff"]
    assert res["n_train"] == 100 and res["n_test"] == 20 and 0 <= m["test_accuracy"] <= 1
    data.clear_cache()
