import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dynacnn.cli import main

TINY = ["--data", "digits", "--width", "0.125", "--stem", "small", "--batch-size", "64"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_train_eval_and_flops_on_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["train", *TINY, "--epochs", "2", "--out", str(out)], capsys)
    assert code == 0 and "calibration top-1" in stdout
    for name in ("run.json", "model.safetensors", "checkpoint.pt", "metrics.json", "metrics.jsonl", "splits.json"):
        assert (out / name).exists(), name
    code, stdout, _ = run_cli(["eval", "--run", str(out), "--json"], capsys)
    metrics = json.loads(stdout)
    assert code == 0 and set(metrics) == {"top1", "top5", "images_per_s"}
    assert 0.3 < metrics["top1"] <= metrics["top5"] <= 1 and metrics["images_per_s"] > 0
    code, stdout, _ = run_cli(["flops", "--run", str(out), "--json"], capsys)
    assert code == 0 and json.loads(stdout)["macs"] > 0


def test_flops_contract_for_resnet18_imagenet(capsys):
    code, stdout, _ = run_cli(
        ["flops", "--arch", "resnet18", "--num-classes", "1000", "--input-size", "3", "224", "224", "--json"], capsys
    )
    report = json.loads(stdout)
    assert code == 0
    assert abs(report["macs"] / 1.81e9 - 1) < 0.01 and abs(report["params"] / 11.69e6 - 1) < 0.01


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["train", "--data", "fashion-mnist", "--data-dir", "/nonexistent/fm"],
            ["/nonexistent/fm", "apt-get install dataset-fashion-mnist"],
        ),
        (["train", "--data", "mnist-typo"], ["mnist-typo"]),
        (["train", "--bogus-option"], ["--bogus-option"]),
        (["train", *TINY, "--epochs", "0"], ["--epochs"]),
        (["eval", "--run", "/nonexistent/run"], ["/nonexistent/run", "dynacnn train"]),
        (["flops", "--input-size", "3", "224"], ["--input-size"]),
        (["train", *TINY, "--device", "tpu"], ["tpu"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragments, capsys):
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, *fragments)


def test_unwritable_output_directory_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", str(blocker / "run")], capsys)
    assert_one_line_error(code, err, str(blocker / "run"), "--out")


def test_debug_flag_shows_the_traceback(capsys):
    from dynacnn.errors import DynacnnError

    with pytest.raises(DynacnnError):
        main(["eval", "--run", "/nonexistent/run", "--debug"])


def _weights(path: Path):
    return load_file(str(path / "model.safetensors"))


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    args = [sys.executable, "-m", "dynacnn", "train", *TINY, "--epochs", "3", "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*args, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before it could be killed"
    subprocess.run([*args, "--out", str(killed), "--resume"], check=True, env=env, capture_output=True)

    straight, resumed = _weights(tmp_path / "straight"), _weights(killed)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert (straight[key] == resumed[key]).all(), key
    final = [json.loads((path / "metrics.json").read_text())["final"] for path in (killed, tmp_path / "straight")]
    for row in final:
        row.pop("images_per_s")
    assert final[0] == final[1]


def test_version_matches_the_package_metadata(capsys):
    from importlib.metadata import version

    import dynacnn

    code, stdout, _ = run_cli(["--version"], capsys)
    assert code == 0 and stdout.strip() == f"dynacnn {dynacnn.__version__}"
    assert version("dynacnn") == dynacnn.__version__
