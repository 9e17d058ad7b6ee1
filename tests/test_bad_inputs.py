"""Catalogue of bad inputs; every entry has a line in docs/bad-inputs.md.

Contract: a bad input raises a `DynacnnError` subclass naming the input and the fix; through the CLI it
is one line on stderr starting with `error: `, exit status 2, no traceback (`--debug` re-raises it).
Every dataset here is a tiny file written into tmp_path. The CLI runs in-process through
`dynacnn.cli.main`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynacnn.cli import main
from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.cpcnn.policy import activate, check_tau
from dynacnn.data import load_dataset
from dynacnn.errors import CheckpointError, ConfigError, DataError, DynacnnError
from dynacnn.io import ensure_dir, write_json
from dynacnn.train import load_checkpoint

# A tiny digits run: 40 training images, width 1/8, 8x8 inputs; one epoch takes well under a second.
TINY = [
    "--data",
    "digits",
    "--width",
    "0.125",
    "--stem",
    "small",
    "--batch-size",
    "32",
    "--train-limit",
    "40",
    "--device",
    "cpu",
]


# ---------------------------------------------------------------------------------------------- helpers


def run_cli(args, capsys):
    """(exit status, stdout, stderr) of `dynacnn ARGS` run in-process."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    """Exit 2, exactly one non-empty stderr line starting with `error: `, holding every fragment."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def idx_bytes(array: np.ndarray, magic_type: int = 8) -> bytes:
    """An IDX file: 0, 0, type (8 = unsigned byte), ndim, big-endian dims, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    return bytes([0, 0, magic_type, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() + array.tobytes()


def write_fashion_mnist(root: Path, per_class: int = 2) -> dict[str, Path]:
    """Tiny, valid, uncompressed Fashion-MNIST IDX files in `root`; returns {file kind: path}."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}
    for prefix in ("train", "t10k"):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 256, size=(len(labels), 28, 28))
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            path = root / f"{prefix}-{kind}"
            path.write_bytes(idx_bytes(array))
            paths[f"{prefix}-{kind}"] = path
    return paths


CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def cifar_batch(labels: list[int]) -> bytes:
    """A CIFAR-10 python batch (bytes keys, uint8 data array) as numpy pickles it."""
    data = np.random.default_rng(len(labels)).integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    return pickle.dumps(
        {b"batch_label": b"tiny", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}, protocol=4
    )


def write_cifar10(parent: Path) -> Path:
    """Tiny, valid `cifar-10-batches-py` (10 images per file) under `parent`; returns the folder."""
    root = parent / "cifar-10-batches-py"
    root.mkdir(parents=True)
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    for name in (*CIFAR_TRAIN, "test_batch"):
        (root / name).write_bytes(cifar_batch(list(range(10))))
    return root


def write_png(path: Path, size: tuple[int, int], value: int = 0, mode: str = "L") -> None:
    """A PNG of `size` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = (np.add.outer(np.arange(height), np.arange(width)) * 9 + value) % 256
    if mode == "RGB":
        pixels = np.stack([pixels, 255 - pixels, pixels // 2], axis=-1)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def write_image_folder(root: Path, classes=("a", "b", "c"), train=4, test=2, size=(8, 8)) -> Path:
    """`root/train/<class>/*.png` and `root/test/<class>/*.png`, grayscale, one size; returns `root`."""
    for split, count in (("train", train), ("test", test)):
        for label, name in enumerate(classes):
            for i in range(count):
                write_png(root / split / name / f"{i}.png", size, 60 * label + i)
    return root


class _FullHandle:
    """A temp-file handle on a disk that fills up: the first write stores half its bytes, then ENOSPC."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        self._handle.write(bytes(data)[: len(data) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        return False

    def __getattr__(self, name):
        return getattr(self._handle, name)


class DiskFills:
    """Stands in for `os` inside `dynacnn.io`: temp files for `target` (after `skip` good ones) hit ENOSPC."""

    def __init__(self, target: str, skip: int = 0):
        self.target, self.skip, self.hits = target, skip, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, *args, **kwargs):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        handle = os.fdopen(fd, *args, **kwargs)
        if name.startswith(f".{self.target}.") or self.target == "*":
            self.hits += 1
            if self.hits > self.skip:
                return _FullHandle(handle)
        return handle


def leftovers(directory: Path) -> list[str]:
    """Temporary files (atomic-write or otherwise) left in `directory`."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 1-epoch tiny digits run made through the CLI (copy it before changing it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, "--epochs", "1", "--out", str(out)])
        raise SystemExit(0)
    torch.set_num_threads(threads)
    assert not exit_info.value.code
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


# ------------------------------------------------------------------------------ data directories (CLI)


def _missing(tmp_path):
    return tmp_path / "no-such-dir"


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10", "imagefolder"])
@pytest.mark.parametrize(
    "make_dir, fragment", [(_missing, "does not exist"), (_empty, "is empty")], ids=["missing", "empty"]
)
def test_missing_or_empty_data_dir(dataset, make_dir, fragment, tmp_path, capsys):
    data_dir = make_dir(tmp_path)
    code, _, err = run_cli(["train", "--data", dataset, "--data-dir", data_dir, "--out", tmp_path / "out"], capsys)
    line = assert_one_line_error(code, err, str(data_dir), fragment)
    assert "--data-dir" in line  # the fix


def test_imagefolder_without_data_dir(tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", "imagefolder", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "imagefolder has no default location", "--data-dir")


def test_fashion_mnist_dir_without_the_test_files(tmp_path, capsys):
    paths = write_fashion_mnist(tmp_path / "fm")
    paths["t10k-images-idx3-ubyte"].unlink()
    code, _, err = run_cli(
        ["train", "--data", "fashion-mnist", "--data-dir", tmp_path / "fm", "--out", tmp_path / "o"], capsys
    )
    assert_one_line_error(code, err, "missing file", str(paths["t10k-images-idx3-ubyte"]))


# ------------------------------------------------------------------------------------- IDX (Fashion-MNIST)


def _wrong_magic(paths):
    # a labels file (magic 0x801) where the images file (0x803) belongs
    paths["train-images-idx3-ubyte"].write_bytes(paths["train-labels-idx1-ubyte"].read_bytes())
    return paths["train-images-idx3-ubyte"], ["magic 0x00000801, expected 0x00000803"]


def _truncated(paths):
    path = paths["train-images-idx3-ubyte"]
    path.write_bytes(path.read_bytes()[:-100])
    return path, ["truncated", "header promises 15680 bytes"]


def _truncated_header(paths):
    path = paths["t10k-labels-idx1-ubyte"]
    path.write_bytes(path.read_bytes()[:6])
    return path, ["truncated"]


def _too_long(paths):
    path = paths["train-labels-idx1-ubyte"]
    path.write_bytes(path.read_bytes() + b"\x00")
    return path, ["longer than its header"]


def _label_12(paths):
    labels = np.repeat(np.arange(10), 2)
    labels[3] = 12
    paths["train-labels-idx1-ubyte"].write_bytes(idx_bytes(labels))
    return paths["train-labels-idx1-ubyte"], ["label 12 outside 0..9"]


def _count_mismatch(paths):
    paths["train-labels-idx1-ubyte"].write_bytes(idx_bytes(np.arange(10)))
    return paths["train-images-idx3-ubyte"], ["20 images", "10 labels"]


def _bad_gzip(paths):
    path = paths["train-images-idx3-ubyte"]
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(b"\x1f\x8b" + b"\x00" * 40)  # gzip magic, garbage after it
    path.unlink()
    return gz, ["not a valid gzip file"]


IDX_CASES = {
    "wrong-magic": _wrong_magic,
    "truncated-body": _truncated,
    "truncated-header": _truncated_header,
    "trailing-bytes": _too_long,
    "label-12-of-10": _label_12,
    "count-mismatch": _count_mismatch,
    "bad-gzip": _bad_gzip,
}


@pytest.mark.parametrize("case", IDX_CASES)
def test_bad_idx_file_is_a_data_error(case, tmp_path):
    bad_path, fragments = IDX_CASES[case](write_fashion_mnist(tmp_path / "fm"))
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path / "fm")
    for fragment in (str(bad_path), *fragments):
        assert fragment in str(info.value)


@pytest.mark.parametrize("case", ["wrong-magic", "truncated-body"])
def test_bad_idx_message_names_the_fix(case, tmp_path):
    IDX_CASES[case](write_fashion_mnist(tmp_path / "fm"))
    with pytest.raises(DataError, match="re-download"):
        load_dataset("fashion-mnist", tmp_path / "fm")


@pytest.mark.parametrize("case", ["wrong-magic", "truncated-body", "label-12-of-10"])
def test_bad_idx_file_through_the_cli(case, tmp_path, capsys):
    bad_path, fragments = IDX_CASES[case](write_fashion_mnist(tmp_path / "fm"))
    code, _, err = run_cli(
        ["train", "--data", "fashion-mnist", "--data-dir", tmp_path / "fm", "--out", tmp_path / "o"], capsys
    )
    assert_one_line_error(code, err, str(bad_path), *fragments)


def test_valid_tiny_idx_files_load(tmp_path):
    """The writer above is right: without damage the same files load (so the cases above test the damage)."""
    splits = load_dataset("fashion-mnist", write_fashion_mnist(tmp_path / "fm")["t10k-images-idx3-ubyte"].parent)
    assert splits.info.input_shape == (1, 28, 28) and len(splits.test) == 20


# ------------------------------------------------------------------------------------------------ CIFAR


def test_valid_tiny_cifar_loads(tmp_path):
    write_cifar10(tmp_path)
    splits = load_dataset("cifar10", tmp_path)
    assert len(splits.train) + len(splits.calib) == 50 and len(splits.test) == 10


def test_truncated_cifar_batch(tmp_path, capsys):
    root = write_cifar10(tmp_path)
    path = root / "data_batch_3"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*not a valid CIFAR pickle"):
        load_dataset("cifar10", tmp_path)
    code, _, err = run_cli(["train", "--data", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, str(path), "not a valid CIFAR pickle", "re-download")


def test_cifar_label_out_of_range(tmp_path):
    root = write_cifar10(tmp_path)
    (root / "test_batch").write_bytes(cifar_batch([0, 1, 2, 3, 4, 5, 6, 7, 8, 10]))
    with pytest.raises(DataError, match=re.escape(str(root / "test_batch")) + r".*outside 0\.\.9"):
        load_dataset("cifar10", tmp_path)


def test_cifar_batch_of_the_wrong_shape(tmp_path):
    root = write_cifar10(tmp_path)
    data = np.zeros((10, 100), dtype=np.uint8)
    (root / "data_batch_1").write_bytes(pickle.dumps({b"labels": list(range(10)), b"data": data}))
    with pytest.raises(DataError, match=r"'data' is not a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", tmp_path)


class _RunsShell:
    """Pickles as a call of os.system (what a malicious 'CIFAR' file would hold)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_reduce(marker: Path) -> bytes:
    return pickle.dumps({b"labels": list(range(10)), b"data": _RunsShell(marker)}, protocol=4)


def _evil_protocol0(marker: Path) -> bytes:
    return b"cbuiltins\nexec\n(Vopen(%r, 'w').close()\ntR." % str(marker).encode()


def _evil_numpy_name(marker: Path) -> bytes:
    # a numpy global that is not one of the three array-rebuilding names
    return b"cnumpy\nload\n(V%s\ntR." % str(marker).encode()


@pytest.mark.parametrize(
    "payload, global_name",
    [(_evil_reduce, "posix.system"), (_evil_protocol0, "builtins.exec"), (_evil_numpy_name, "numpy.load")],
)
@pytest.mark.parametrize("file", ["data_batch_1", "batches.meta"])
def test_malicious_cifar_pickle_is_refused_and_not_executed(payload, global_name, file, tmp_path, capsys):
    root = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    (root / file).write_bytes(payload(marker))
    with pytest.raises(DataError, match=f"forbidden global {re.escape(global_name)}"):
        load_dataset("cifar10", tmp_path)
    code, _, err = run_cli(["train", "--data", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, str(root / file), "not a valid CIFAR pickle")
    assert not marker.exists()


def test_cifar_repickled_by_python3_with_protocol_2(tmp_path):
    """Python 3 pickles bytes at protocol <= 2 through _codecs.encode: such a re-saved file is refused cleanly (or loads)."""
    root = write_cifar10(tmp_path)
    batch = {b"labels": list(range(10)), b"data": np.zeros((10, 3072), dtype=np.uint8), b"batch_label": b"x"}
    (root / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    try:
        splits = load_dataset("cifar10", tmp_path)
    except DataError as exc:
        assert str(root / "data_batch_2") in str(exc) and "forbidden global _codecs.encode" in str(exc)
    else:
        assert len(splits.train) + len(splits.calib) == 50


def test_the_same_payload_does_run_under_plain_pickle(tmp_path):
    """Guard for the test above: the payload is live, so its marker not appearing means it was refused."""
    marker = tmp_path / "pwned"
    pickle.loads(_evil_protocol0(marker))
    assert marker.exists()


# ------------------------------------------------------------------------------------------ image folder


def test_image_folder_with_mixed_sizes_is_refused(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs")
    odd = root / "train" / "b" / "9.png"
    write_png(odd, (10, 8))
    with pytest.raises(DataError) as info:
        load_dataset("imagefolder", root)
    message = str(info.value)
    assert str(odd) in message and "10x8" in message and "8x8" in message and "image_size" in message
    code, _, err = run_cli(["train", "--data", "imagefolder", "--data-dir", root, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, str(odd), "image_size")
    # the documented fix works through the Python API
    assert load_dataset("imagefolder", root, image_size=8).info.input_shape == (1, 8, 8)


def test_mixed_size_error_only_suggests_options_the_cli_has(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs")
    write_png(root / "train" / "b" / "9.png", (10, 8))
    code, _, err = run_cli(["train", "--data", "imagefolder", "--data-dir", root, "--out", tmp_path / "o"], capsys)
    line = assert_one_line_error(code, err)
    import typer

    from dynacnn.cli import app

    train = typer.main.get_command(app).commands["train"]
    options = {opt for param in train.params for opt in param.opts}
    suggested = set(re.findall(r"--[a-z][a-z-]+", line))
    assert suggested <= options, f"{sorted(suggested - options)} suggested but `dynacnn train` has no such option"


def test_non_image_file_is_skipped_with_a_warning(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    stray = root / "train" / "a" / "notes.txt"
    stray.write_text("not an image")
    stray_top = root / "train" / "labels.csv"
    stray_top.write_text("a,b,c")
    with pytest.warns(UserWarning) as record:
        splits = load_dataset("imagefolder", root)
    messages = [str(w.message) for w in record]
    assert any(str(stray) in m and "not an image file" in m for m in messages), messages
    assert any(str(stray_top) in m and "not a class folder" in m for m in messages), messages
    assert len(splits.train) + len(splits.calib) == 12  # every real image kept, the stray files dropped


def test_non_image_file_through_the_cli_trains_with_a_warning(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs")
    stray = root / "test" / "c" / ".DS_Store"
    stray.write_bytes(b"\x00\x00\x00\x01Bud1")
    out = tmp_path / "o"
    with pytest.warns(UserWarning, match=re.escape(str(stray))):
        code, stdout, _ = run_cli(
            [
                "train",
                "--data",
                "imagefolder",
                "--data-dir",
                root,
                "--width",
                "0.125",
                "--stem",
                "small",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--out",
                out,
            ],
            capsys,
        )
    assert code == 0 and "calibration top-1" in stdout
    assert json.loads((out / "run.json").read_text())["data"]["name"] == "imagefolder"


def test_class_folder_with_no_image(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    for png in (root / "test" / "b").iterdir():
        png.unlink()
    (root / "test" / "b" / "readme.txt").write_text("x")
    with (
        pytest.warns(UserWarning),
        pytest.raises(DataError, match=re.escape(str(root / "test" / "b")) + " holds no image"),
    ):
        load_dataset("imagefolder", root)


def test_train_and_test_class_folders_differ(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    (root / "test" / "c").rename(root / "test" / "z")
    with pytest.raises(DataError, match=r"different class folders \(e\.g\. \['c', 'z'\]\)"):
        load_dataset("imagefolder", root)


def test_image_folder_bad_image_size_option(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match=f"image_size {bad!r} must be a positive integer"):
            load_dataset("imagefolder", root, image_size=bad)


# -------------------------------------------------------------------------------- clustering API (Alg. 2)


def _calibration(n_classes: int = 6, per_class: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    logits = rng.normal(size=(len(labels), n_classes))
    logits[np.arange(len(labels)), labels] += 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_clustering_refuses_nan_or_inf_probabilities(value):
    probs, labels = _calibration()
    probs[5, 2] = value
    with pytest.raises(DataError, match=r"probs has NaN or inf in 1 rows \(first: row 5\)"):
        HyperClassClustering(n_clusters=2).fit(probs, labels)


def test_clustering_refuses_logits():
    probs, labels = _calibration()
    with pytest.raises(DataError, match="negative entries.*not logits"):
        HyperClassClustering(n_clusters=2).fit(np.log(probs), labels)


def test_clustering_renormalises_rows_not_summing_to_one_with_a_warning():
    probs, labels = _calibration()
    scaled = probs * np.linspace(0.5, 2.0, len(probs))[:, None]
    with pytest.warns(UserWarning, match="rows of probs do not sum to 1.*renormalising"):
        fitted = HyperClassClustering(n_clusters=2).fit(scaled, labels)
    reference = HyperClassClustering(n_clusters=2).fit(probs, labels)
    assert np.array_equal(fitted.labels_, reference.labels_)
    np.testing.assert_allclose(fitted.eigenvalues_, reference.eigenvalues_, atol=1e-10)


def test_clustering_row_summing_to_zero():
    probs, labels = _calibration()
    probs[4] = 0
    with pytest.raises(DataError, match="probs row 4 sums to 0"):
        HyperClassClustering().fit(probs, labels)


@pytest.mark.parametrize("n_classes", [1, 2])
def test_clustering_needs_three_classes(n_classes):
    probs, labels = _calibration(n_classes=n_classes)
    with pytest.raises(DataError, match=f"probs has {n_classes} classes; hyper-class clustering needs K >= 3"):
        HyperClassClustering().fit(probs, labels)


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"n_clusters": 7}, "n_clusters=7 must be an integer in [2, 6]"),
        ({"n_clusters": 1}, "n_clusters=1 must be an integer in [2, 6]"),
        ({"max_clusters": 6}, "max_clusters=6 must be an integer in [2, 5]"),
        ({"n_neighbors": 6}, "n_neighbors=6 must be an integer in [1, 5]"),
        ({"similarity": "cosine"}, "similarity='cosine' must be one of"),
    ],
)
def test_clustering_parameters_out_of_range(params, fragment):
    probs, labels = _calibration()
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        HyperClassClustering(**params).fit(probs, labels)


def test_clustering_n_clusters_equal_to_k_is_allowed():
    probs, labels = _calibration()
    assert sorted(HyperClassClustering(n_clusters=6).fit(probs, labels).labels_) == list(range(6))


def test_clustering_labels_out_of_range_or_a_class_without_images():
    probs, labels = _calibration()
    bad = labels.copy()
    bad[0] = 6
    with pytest.raises(DataError, match=r"labels\[0\] = 6 is outside \[0, 5\]"):
        HyperClassClustering().fit(probs, bad)
    bad = labels.copy()
    bad[bad == 3] = 2
    with pytest.raises(DataError, match="class 3 has no calibration images"):
        HyperClassClustering().fit(probs, bad)


# -------------------------------------------------------------------------------- activation policy (Alg. 1)


V = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])


@pytest.mark.parametrize("tau", [0, 0.0, -0.1, 1.0000001, 1.5, float("nan"), float("inf"), True, "0.9", None])
def test_tau_out_of_range_is_refused(tau):
    with pytest.raises(ConfigError, match=r"tau .* must be in \(0, 1\]"):
        activate(V, None, tau)
    with pytest.raises(ConfigError):
        check_tau(tau)


def test_tau_edges_are_documented_behaviour():
    active, weights = activate(V, None, 1)  # tau = 1 activates every hyper-class
    assert active.all()
    torch.testing.assert_close(weights, V / V.sum(1, keepdim=True))
    active, _ = activate(V, None, 1e-9)  # a tiny tau activates only the argmax
    assert active.tolist() == [[True, False, False], [False, False, True]]
    active, _ = activate(V, None, 0.5)  # "exceed": a set summing to exactly tau still grows
    assert active[0].tolist() == [True, True, False]


def test_policy_unknown_rule_or_bad_confusion():
    with pytest.raises(ConfigError, match="unknown activation rule 'best'"):
        activate(V, None, 0.9, rule="best")
    with pytest.raises(ConfigError, match="need the clustifier's"):
        activate(V, None, 0.9, rule="confusion")
    with pytest.raises(ConfigError, match=r"confusion must be a \(3, 3\) tensor"):
        activate(V, torch.ones(2, 2), 0.9, rule="confusion")
    with pytest.raises(ConfigError, match="finite non-negative"):
        activate(V, torch.full((3, 3), float("nan")), 0.9, rule="confusion")
    with pytest.raises(ConfigError, match=r"floating \(B, G\) tensor"):
        activate(torch.tensor([[1, 0, 0]]), None, 0.9)


def test_nan_in_clustifier_probabilities_is_not_silently_spread():
    """Not validated by policy.py (hot path); a NaN row must still give finite weights over one head, or be refused."""
    v = torch.tensor([[0.5, float("nan"), 0.2], [0.1, 0.2, 0.7]])
    try:
        active, weights = activate(v, None, 0.6)
    except ConfigError as exc:
        assert "nan" in str(exc).lower()
        return
    assert torch.isfinite(weights).all()
    assert active.sum(1).tolist() == [1, 1]
    torch.testing.assert_close(weights.sum(1), torch.ones(2))


# --------------------------------------------------------------------------------------- output directory


def test_out_is_an_existing_regular_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", blocker], capsys)
    assert_one_line_error(code, err, f"cannot write to output directory {blocker}", "--out")
    assert blocker.read_text() == "keep me"


def test_out_under_a_regular_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(DynacnnError, match="cannot write to output directory"):
        ensure_dir(blocker / "deeper" / "run")
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", blocker / "run"], capsys)
    assert_one_line_error(code, err, str(blocker / "run"), "choose another --out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_out_in_a_read_only_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", locked / "run"], capsys)
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, err, str(locked / "run"), "--out")


# --------------------------------------------------------------------------------- checkpoints and runs


def test_resume_with_other_settings(run_copy, capsys):
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--lr", "0.05", "--resume", "--out", run_copy], capsys)
    assert_one_line_error(code, err, str(run_copy / "checkpoint.pt"), "other settings", "without --resume")


def test_resume_with_other_data_seed(run_copy, capsys):
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--seed", "3", "--resume", "--out", run_copy], capsys)
    assert_one_line_error(code, err, "other settings")


@pytest.mark.parametrize("keep", [0, 10, 1000, -1])
def test_resume_from_a_truncated_checkpoint(keep, run_copy, capsys):
    path = run_copy / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:keep])
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--resume", "--out", run_copy], capsys)
    assert_one_line_error(code, err, str(path), "corrupt", "delete it and re-run")


def test_resume_from_a_checkpoint_of_another_format_version(run_copy, capsys):
    path = run_copy / "checkpoint.pt"
    torch.save({"format_version": 99, "epoch": 1}, path)
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--resume", "--out", run_copy], capsys)
    assert_one_line_error(code, err, str(path), "unknown format version")


def test_checkpoint_holding_arbitrary_objects_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would unpickle a callable is corrupt, and is not executed."""
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as handle:
        torch.save({"format_version": 1, "x": _RunsShell(marker)}, handle)
    with pytest.raises(CheckpointError, match="corrupt or not a dynacnn checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 7, 100, "half", "all-but-one"])
def test_eval_with_a_truncated_model_safetensors(keep, run_copy, capsys):
    path = run_copy / "model.safetensors"
    data = path.read_bytes()
    keep = {"half": len(data) // 2, "all-but-one": len(data) - 1}.get(keep, keep)
    path.write_bytes(data[:keep])
    code, _, err = run_cli(["eval", "--run", run_copy, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, str(path), "not a readable safetensors file", "delete it and re-run")


def test_eval_with_weights_of_another_architecture(run_copy, capsys):
    meta = json.loads((run_copy / "run.json").read_text())
    meta["model"]["width"] = 0.25
    (run_copy / "run.json").write_text(json.dumps(meta))
    code, _, err = run_cli(["eval", "--run", run_copy, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, str(run_copy / "model.safetensors"), "another architecture or number of classes")


def test_cluster_then_retrain_then_cpcnn_refuses_the_stale_hyper_classes(run_copy, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    code, _, err = run_cli(["cluster", "--run", run_copy, "--hyper-classes", "2", "--device", "cpu"], capsys)
    assert code == 0, err
    recorded = json.loads((run_copy / "clusters.json").read_text())["backbone_sha256"]
    assert recorded == hashlib.sha256((run_copy / "model.safetensors").read_bytes()).hexdigest()
    weights = load_file(str(run_copy / "model.safetensors"))
    weights["fc.bias"] = weights["fc.bias"] + 1.0  # as if the run were trained again into the same directory
    save_file(weights, str(run_copy / "model.safetensors"))
    out = tmp_path / "out"
    code, _, err = run_cli(["cpcnn", "--run", run_copy, "--out", out, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, str(run_copy / "clusters.json"), "other weights", "re-run `dynacnn cluster`")
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "flops"])
def test_run_json_of_another_format_version(command, run_copy, capsys):
    meta = json.loads((run_copy / "run.json").read_text())
    meta["format_version"] = 2
    (run_copy / "run.json").write_text(json.dumps(meta))
    code, _, err = run_cli([command, "--run", run_copy], capsys)
    assert_one_line_error(code, err, f"{run_copy}/run.json has an unknown format version")


@pytest.mark.parametrize(
    "text, fragment", [('{"format_version": 1, "mod', "is not valid JSON"), ('{"format_version": 1}', "is incomplete")]
)
def test_run_json_corrupt_or_incomplete(text, fragment, run_copy, capsys):
    (run_copy / "run.json").write_text(text)
    code, _, err = run_cli(["eval", "--run", run_copy], capsys)
    assert_one_line_error(code, err, str(run_copy), fragment)


def test_eval_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(["eval", "--run", tmp_path], capsys)
    assert_one_line_error(code, err, f"{tmp_path} is not a finished dynacnn run (no run.json)")


# ---------------------------------------------------------------------------------------- the disk fills up


def test_disk_full_during_write_json_keeps_the_previous_file(tmp_path, monkeypatch):
    import dynacnn.io

    path = tmp_path / "metrics.json"
    write_json(path, {"top1": 0.5})
    before = path.read_bytes()
    disk = DiskFills("metrics.json")
    monkeypatch.setattr(dynacnn.io, "os", disk)
    with pytest.raises(DynacnnError, match="cannot write .*metrics.json.*No space left") as info:
        write_json(path, {"top1": 0.9, "history": list(range(1000))})
    monkeypatch.undo()
    assert info.value.__cause__.errno == errno.ENOSPC and disk.hits == 1
    assert path.read_bytes() == before and json.loads(before) == {"top1": 0.5}
    assert leftovers(tmp_path) == []


def test_disk_full_during_a_cli_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    import dynacnn.io

    out = tmp_path / "run"
    args = ["train", *TINY, "--batch-size", "16", "--epochs", "2", "--out", str(out)]  # 3 steps per epoch
    disk = DiskFills("checkpoint.pt", skip=1)  # epoch 1's checkpoint is written, epoch 2's hits a full disk
    monkeypatch.setattr(dynacnn.io, "os", disk)
    with pytest.raises((OSError, SystemExit)):
        main(args)
    monkeypatch.undo()
    capsys.readouterr()
    assert disk.hits == 2
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert leftovers(out) == []
    assert not (out / "model.safetensors").exists() and not (out / "run.json").exists()
    # once space is back, --resume finishes the run from epoch 1
    code, stdout, _ = run_cli([*args, "--resume"], capsys)
    assert code == 0 and "calibration top-1" in stdout
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2]


def test_disk_full_while_saving_the_model_keeps_the_previous_model(run_copy, monkeypatch, capsys):
    import dynacnn.io

    before = (run_copy / "model.safetensors").read_bytes()
    monkeypatch.setattr(dynacnn.io, "os", DiskFills("model.safetensors"))
    with pytest.raises((OSError, SystemExit)):  # --resume of a finished run: no training, just re-saves it
        main(["train", *TINY, "--epochs", "1", "--resume", "--out", str(run_copy)])
    monkeypatch.undo()
    capsys.readouterr()
    assert (run_copy / "model.safetensors").read_bytes() == before
    code, stdout, _ = run_cli(["eval", "--run", run_copy, "--device", "cpu", "--json"], capsys)
    assert code == 0 and 0 <= json.loads(stdout)["top1"] <= 1


def test_disk_full_while_saving_the_model_leaves_no_temp_file(run_copy, monkeypatch, capsys):
    import dynacnn.io

    monkeypatch.setattr(dynacnn.io, "os", DiskFills("model.safetensors"))
    with pytest.raises((OSError, SystemExit)):
        main(["train", *TINY, "--epochs", "1", "--resume", "--out", str(run_copy)])
    monkeypatch.undo()
    capsys.readouterr()
    assert leftovers(run_copy) == []


def test_disk_full_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    import dynacnn.io

    out = tmp_path / "run"
    monkeypatch.setattr(dynacnn.io, "os", DiskFills("*"))  # the first artifact (splits.json) already fails
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", out], capsys)
    assert_one_line_error(code, err, str(out), "No space left on device")


# ----------------------------------------------------------------------------- unknown names and values


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["train", "--data", "imagenet"],
            ["Invalid value for '--data'", "'imagenet' is not one of", "'fashion-mnist'"],
        ),
        (["train", *TINY, "--device", "tpu"], ["unknown --device 'tpu'", "auto, cpu or cuda"]),
        (["train", *TINY, "--stem", "tiny"], ["Invalid value for '--stem'", "'tiny' is not one of", "'small-pool'"]),
        (
            ["train", *TINY, "--arch", "resnet99"],
            ["Invalid value for '--arch'", "'resnet99' is not one of", "'resnet18'"],
        ),
        (["train", *TINY, "--schedule", "linear"], ["'linear' is not one of 'onecycle', 'cosine'"]),
        (["train", *TINY, "--epochs", "0"], ["--epochs must be at least 1, got 0"]),
        (["train", *TINY, "--batch-size", "0"], ["--batch-size must be at least 1"]),
        (["train", *TINY, "--lr", "-0.1"], ["--lr must be positive"]),
        (["train", *TINY, "--calib-fraction", "0.9"], ["calib_fraction 0.9 must be in (0, 0.5]"]),
        (["train", *TINY, "--calib-fraction", "0"], ["calib_fraction 0.0 must be in (0, 0.5]"]),
        (["train", *TINY, "--width", "0"], ["width multiplier must be positive"]),
        (["train", "--epochs", "many"], ["'--epochs'", "valid int"]),
        (["train", "--no-such-option"], ["--no-such-option"]),
        (["eval"], ["'--run'"]),
        (["no-such-command"], ["no-such-command"]),
    ],
)
def test_unknown_names_and_values(args, fragments, tmp_path, capsys):
    code, _, err = run_cli(
        [*args, "--out", tmp_path / "o"] if args[0] == "train" and "--out" not in args else args, capsys
    )
    assert_one_line_error(code, err, *fragments)


def test_a_four_step_onecycle_run_trains(tmp_path, capsys):
    # 40 images, batch 64: one step per epoch, 4 epochs = 4 optimizer steps in all
    code, stdout, err = run_cli(
        ["train", *TINY, "--batch-size", "64", "--epochs", "4", "--out", tmp_path / "o"], capsys
    )
    assert code == 0 and "calibration top-1" in stdout, err


def test_unknown_command_hint_points_at_a_real_help(capsys):
    code, _, err = run_cli(["trian"], capsys)
    line = assert_one_line_error(code, err, "No such command 'trian'")
    assert "dynacnn trian --help" not in line and "dynacnn --help" in line


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        main(
            [
                "train",
                "--data",
                "cifar10",
                "--data-dir",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "o"),
                "--debug",
            ]
        )
    monkeypatch.setenv("DYNACNN_DEBUG", "1")
    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        main(["train", "--epochs", "0", "--out", str(tmp_path / "o")])


# ------------------------------------------------------------------------- cpcnn, mscnn and demo options (CLI)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["cpcnn", "--tau", "1.5"], ["tau 1.5 must be in (0, 1]"]),
        (["cpcnn", "--tau", "0"], ["tau 0.0 must be in (0, 1]"]),
        (["cpcnn", "--split", "layer4"], ["Invalid value for '--split'", "'layer4' is not one of 'stem', 'layer1'"]),
        (["cpcnn", "--max-drop", "-1"], ["max_drop", "percentage points"]),
        (["cpcnn", "--memory-format", "nhwc"], ["Invalid value for '--memory-format'", "'nhwc'", "'channels_last'"]),
        (["cpcnn", "--configs", "L1,C0:L2"], ["mixes fixed"]),
        (["cpcnn", "--clusters", "1"], ["--hyper-classes 1", "hyper-classes"]),
        (["cpcnn", "--hyper-classes", "11"], ["11 must be a whole number of hyper-classes in [2, 10]"]),
        (["mscnn", "--data", "digits", "--max-drop", "-1"], ["--max-drop -1.0"]),
        (["mscnn", "--data", "digits", "--fc-rows", "rows"], ["Invalid value for '--fc-rows'", "'batch', 'image'"]),
        (["demo", "--data", "digits", "--max-drop", "-1"], ["--max-drop -1.0", "percentage points"]),
        (["demo", "--data", "digits", "--epochs", "0"], ["--epochs", "positive integer"]),
    ],
)
def test_cpcnn_mscnn_demo_options_are_refused_before_anything_is_written(args, fragments, tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    command = [*args, "--out", out, "--device", "cpu", *(["--run", tiny_run] if args[0] == "cpcnn" else [])]
    code, _, err = run_cli(command, capsys)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_cpcnn_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(["cpcnn", "--run", tmp_path / "nothing", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, str(tmp_path / "nothing"), "dynacnn train")


def test_bench_of_a_directory_that_is_not_a_demo(tmp_path, capsys):
    code, _, err = run_cli(["bench", "--demo-dir", tmp_path], capsys)
    assert_one_line_error(code, err, str(tmp_path), "base/run.json", "dynacnn demo --out")


def test_bench_with_no_repetitions(tmp_path, capsys):
    code, _, err = run_cli(["bench", "--demo-dir", tmp_path, "--repeats", "0"], capsys)
    assert_one_line_error(code, err, "--repeats", "positive integer")


# -------------------------------------------------------------------- your own model: --checkpoint, --arch (CLI)

OWN_ARCH = "torchvision:resnet18"


def write_rgb_folder(root: Path, classes: int) -> Path:
    """An RGB image folder of `classes` classes (c0, c1, ...), 8x8, two training and one test image each."""
    for split, count in (("train", 2), ("test", 1)):
        for label in range(classes):
            for i in range(count):
                write_png(root / split / f"c{label}" / f"{i}.png", (8, 8), 50 * label + i, mode="RGB")
    return root


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A randomly initialised torchvision ResNet-18 with a 3-class head (safetensors), a 3-class RGB folder, a
    4-class one and a grayscale 3-class one."""
    from safetensors.torch import save_file

    from dynacnn.models.external import build_external

    root = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    state = {key: value.contiguous() for key, value in build_external(OWN_ARCH, 3).state_dict().items()}
    save_file(state, str(root / "resnet18.safetensors"))
    write_image_folder(root / "gray", classes=("c0", "c1", "c2"))
    return {
        "checkpoint": root / "resnet18.safetensors",
        "three": write_rgb_folder(root / "three", 3),
        "four": write_rgb_folder(root / "four", 4),
        "gray": root / "gray",
    }


@pytest.mark.parametrize(
    "changes, extra, fragments",
    [
        ({"--arch": "torchvision:resnet34"}, [], ["is not a torchvision:resnet34 checkpoint", "first difference"]),
        ({"--arch": "torchvision:vgg16"}, [], ["Invalid value for '--arch'", "timm:<resnet name>"]),
        ({"--arch": "timm:vit_base_patch16_224"}, [], ["unknown architecture 'timm:vit_base_patch16_224'"]),
        ({"--data-dir": "four"}, [], ["3 output classes but the data (imagefolder) has 4 (c0, c1, c2, ...)"]),
        ({"--data-dir": "gray"}, [], ["takes 3-channel images but the data (imagefolder) has 1"]),
        ({}, ["--mean", "0.5", "0.5"], ["--mean has 2 values; give one per image channel"]),
        ({}, ["--std", "0.2", "0.2", "0.2", "0.2"], ["--std has 4 values; give one per image channel"]),
        ({}, ["--std", "0", "1", "1"], ["--std", "must be positive"]),
        ({"--arch": None}, [], ["--checkpoint needs --arch"]),
        ({}, ["--run", "RUN"], ["give exactly one of --run DIR", "or --checkpoint FILE --arch ARCH"]),
    ],
    ids=[
        "other-arch",
        "unknown-arch",
        "unknown-timm",
        "other-classes",
        "grayscale",
        "mean-2",
        "std-4",
        "std-0",
        "no-arch",
        "run-and-checkpoint",
    ],
)
@pytest.mark.parametrize("command", ["cpcnn", "cluster"])
def test_own_model_mismatches_are_one_line(command, changes, extra, fragments, own_model, tmp_path, capsys):
    given = {
        "--checkpoint": own_model["checkpoint"],
        "--arch": OWN_ARCH,
        "--data": "imagefolder",
        "--data-dir": "three",
    }
    given.update(changes)
    given["--data-dir"] = own_model[given["--data-dir"]]
    out = tmp_path / "out"
    options = [item for option, value in given.items() if value is not None for item in (option, value)]
    extra = [tmp_path if arg == "RUN" else arg for arg in extra]
    code, _, err = run_cli([command, *options, *extra, "--out", out, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["cpcnn", "--out", "OUT"], ["give exactly one of --run DIR"]),
        (["cpcnn", "--run", "RUN", "--image-size", "32"], ["--image-size cannot be used with --run"]),
        (["cpcnn", "--run", "RUN", "--data", "digits"], ["--data cannot be used with --run"]),
        (["cpcnn", "--checkpoint", "/no/such.pt", "--arch", OWN_ARCH], ["'--checkpoint'", "does not exist"]),
        (["cpcnn", "--run", "RUN", "--clusters-file", "/no/clusters.json"], ["'--clusters-file'", "does not exist"]),
        (
            ["cluster", "--checkpoint", "CKPT", "--arch", OWN_ARCH, "--data", "imagefolder"],
            ["--checkpoint needs --out"],
        ),
        (["train", *TINY, "--mean", "0.5", "0.5", "0.5"], ["--mean/--std need 1 value(s) each", "--mean has 3"]),
    ],
    ids=[
        "neither",
        "run-and-image-size",
        "run-and-data",
        "no-checkpoint",
        "no-clusters-file",
        "cluster-no-out",
        "mean-3-of-1",
    ],
)
def test_source_options_are_refused_before_anything_is_written(args, fragments, tiny_run, own_model, tmp_path, capsys):
    out = tmp_path / "out"
    swap = {"RUN": tiny_run, "CKPT": own_model["checkpoint"], "OUT": out}
    args = [swap.get(arg, arg) for arg in args]
    code, _, err = run_cli([*args, *(["--out", out] if "--out" not in args and args[0] != "cluster" else [])], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()
