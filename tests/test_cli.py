import json
import os
import shutil
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
    code, stdout, _ = run_cli(["train", *TINY, "--epochs", "2", "--out", str(out), "--json"], capsys)
    summary = json.loads(stdout)
    assert code == 0 and summary["out"] == str(out) and 0 < summary["calib"]["top1"] <= 1
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
        (["train", "--data", "mnist-typo"], ["'mnist-typo' is not one of", "'fashion-mnist'"]),
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


# ------------------------------------------------------------------------------------ the command line as a whole

FIGURE_COMMANDS = ("train", "eval", "flops", "cluster", "cpcnn", "mscnn", "demo", "bench", "export", "run")
DATA_COMMANDS = ("train", "cluster", "cpcnn", "mscnn", "demo")


def commands():
    import typer

    from dynacnn.cli import app

    return typer.main.get_command(app).commands


def options(command: str) -> dict[str, object]:
    """Option name -> parameter, for every name (aliases included) of a command's options."""
    return {name: param for param in commands()[command].params for name in [*param.opts, *param.secondary_opts]}


def test_help_shows_each_commands_whole_summary(capsys):
    code, stdout, _ = run_cli(["--help"], capsys)
    listed = dict(line.split(None, 1) for line in stdout.split("Commands:")[1].strip().splitlines())
    assert code == 0 and set(listed) == set(commands()) == set(FIGURE_COMMANDS)
    for name, command in commands().items():
        summary = command.help.split("\n")[0].strip()
        assert listed[name].strip() == summary and "." not in summary, (name, listed[name])


def test_the_command_lines_choices_are_the_packages():
    from dynacnn.cli import options as cli
    from dynacnn.cpcnn.clustering import EDGE_WEIGHTS, SIMILARITIES
    from dynacnn.cpcnn.compress import SPLIT_POINTS
    from dynacnn.data import DATASETS
    from dynacnn.models.external import ARCH_CHOICES
    from dynacnn.models.layout import MEMORY_FORMATS
    from dynacnn.models.resnet import STAGE_BLOCKS, STEMS
    from dynacnn.mscnn.execute import FC_ROWS
    from dynacnn.train import PRECISIONS, SCHEDULES

    assert cli.DATASETS == DATASETS and cli.SPLITS == SPLIT_POINTS and cli.PRECISIONS == PRECISIONS
    assert cli.ARCHS == tuple(STAGE_BLOCKS) and cli.STEMS == STEMS and cli.SCHEDULES == SCHEDULES
    assert cli.MEMORY_FORMATS == ("auto", *MEMORY_FORMATS) and set(cli.FC_ROWS) == set(FC_ROWS)
    assert cli.SIMILARITIES == SIMILARITIES and cli.EDGE_WEIGHTS == EDGE_WEIGHTS
    assert set(cli.EXTERNAL_ARCHS) == {arch for arch in ARCH_CHOICES if arch.startswith("torchvision:")}


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "imagenet"],
        ["train", "--arch", "resnet99"],
        ["train", "--stem", "tiny"],
        ["train", "--schedule", "linear"],
        ["train", "--precision", "fp8"],
        ["flops", "--stem", "tiny"],
        ["cluster", "--run", "r", "--similarity", "cosine"],
        ["cluster", "--run", "r", "--edge-weights", "soft"],
        ["cpcnn", "--run", "r", "--split", "layer4"],
        ["cpcnn", "--run", "r", "--memory-format", "nhwc"],
        ["cpcnn", "--checkpoint", __file__, "--arch", "torchvision:vgg16"],
        ["cpcnn", "--checkpoint", __file__, "--arch", "timm:"],
        ["mscnn", "--fc-rows", "rows"],
        ["demo", "--data", "mnist"],
    ],
    ids=lambda args: f"{args[0]}{args[-2]}",
)
def test_fixed_value_options_are_checked_when_parsed(args, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli([*args, *(["--out", str(out)] if args[0] != "flops" else [])], capsys)
    assert_one_line_error(code, err, f"Invalid value for '{args[-2]}'", repr(args[-1]), f"dynacnn {args[0]} --help")
    assert not out.exists()


def test_the_same_options_on_every_command_that_takes_them():
    for command in FIGURE_COMMANDS:
        assert "--json" in options(command), command
    for command in DATA_COMMANDS:
        assert {"--data", "--data-dir", "--image-size", "--mean", "--std", "--stream", "--out"} <= set(options(command))
    for command in ("train", "cpcnn", "mscnn", "demo"):
        assert "--precision" in options(command), command
    for command, default in (("train", True), ("mscnn", False)):
        found = options(command)
        assert found["--no-augment"] is found["--augment"] and found["--augment"].default is default
    for command, alias in (("cpcnn", "--clusters"), ("cluster", "--n-clusters")):
        found = options(command)
        assert found[alias] is found["--hyper-classes"]
    for command in ("eval", "flops", "cluster", "cpcnn"):
        assert "--run" in options(command)
    assert "--demo-dir" in options("bench")


def test_shell_completion_offers_the_choices_without_importing_torch():
    code = "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules)); from dynacnn.cli import main; main()"
    env = {**os.environ, "_DYNACNN_COMPLETE": "complete_bash", "COMP_CWORD": "3"}
    for words, cword, expected in (
        ("dynacnn cpcnn --split l", "3", ["layer1", "layer2", "layer3"]),
        ("dynacnn cl", "1", ["cluster"]),
    ):
        env.update(COMP_WORDS=words, COMP_CWORD=cword)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.split() == [*expected, "False"], (done.stdout, done.stderr)


@pytest.mark.parametrize(
    "args, spread",
    [
        (
            ["--mean", "0.5", "0.4", "0.3", "--out", "o"],
            ["--mean", "0.5", "--mean", "0.4", "--mean", "0.3", "--out", "o"],
        ),
        (["--std=0.2,0.1", "0.3"], ["--std", "0.2", "--std", "0.1", "--std", "0.3"]),
        (["--mean", "-1", "--std", "2"], ["--mean", "-1", "--std", "2"]),
        (["--mean", "--std", "2"], ["--mean", "--std", "2"]),
        (["--out", "", "--epochs", "3"], ["--out", "", "--epochs", "3"]),
    ],
)
def test_one_value_per_channel_after_mean_and_std(args, spread):
    from dynacnn.cli import spread_per_channel

    assert spread_per_channel(args) == spread


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    main_args = ["train", *TINY, "--batch-size", "32", "--train-limit", "60", "--epochs", "1", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main([*main_args, "--device", "cpu"])
        raise SystemExit(0)
    assert not exit_info.value.code
    return out


def test_cpcnn_uses_the_clusters_that_cluster_wrote(tiny_run, tmp_path, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    code, stdout, _ = run_cli(["cluster", "--run", str(run), "--hyper-classes", "3", "--json"], capsys)
    made = json.loads(stdout)
    assert code == 0 and made["n_clusters"] == 3 and (run / "clusters.json").exists()
    groups = [group["names"] for group in made["hyper_classes"]]

    out = tmp_path / "cpcnn"
    code, _, err = run_cli(["cpcnn", "--run", str(run), "--hyper-classes", "2", "--out", str(out)], capsys)
    assert_one_line_error(code, err, str(run / "clusters.json"), "holds 3 hyper-classes but --hyper-classes 2")
    assert not out.exists()

    fixed = "clustifier:LP,C0:LP,C1:LP,C2:LP"
    args = ["--split", "layer3", "--configs", fixed, "--tau", "0.9", "--epochs", "1", "--memory-format", "contiguous"]
    code, stdout, _ = run_cli(["cpcnn", "--run", str(run), *args, "--device", "cpu", "--out", str(out)], capsys)
    assert (
        code == 0
        and stdout.splitlines()[0] == f"hyper-classes from {run / 'clusters.json'} (written by `dynacnn cluster`)"
    )
    assert json.loads((out / "cpcnn.json").read_text())["clusters"] == groups
