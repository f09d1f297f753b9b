"""Datasets load as normalized tensors with a deterministic split; torchvision datasets are
read from small files written here in torchvision's own formats; offline, a download fails
in seconds with a message that points to the bundled digits."""
from __future__ import annotations

import gzip
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gradcourse as gc
from gradcourse._torchvision import import_torchvision
from gradcourse.data import data_root

N_DIGITS = 1797
# The real MNIST test split, beside the repository in CI (../shared/data/mnist); absent in a
# user's clone, where the test that needs it skips.
REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


# -- digits ------------------------------------------------------------------------------

def test_digits_are_1797_single_channel_8x8_images_in_10_classes(digits):
    assert digits.x_train.shape[1:] == (1, 8, 8)
    assert len(digits.y_train) + len(digits.y_val) == N_DIGITS
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10
    assert digits.class_names == tuple(str(c) for c in range(10))
    assert set(digits.y_train.tolist()) == set(range(10))


def test_digits_default_split_holds_out_a_fifth_for_validation(digits):
    assert len(digits.y_val) == round(0.2 * N_DIGITS)


def test_training_images_are_normalized_to_zero_mean_unit_std_per_channel(digits):
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert float(digits.x_train.std()) == pytest.approx(1.0, abs=1e-4)


def test_validation_images_use_the_training_statistics(digits):
    # Digit pixels take 17 values (k/16); one shared (x - mean) / std maps them to the same 17 floats.
    train_values = set(digits.x_train.unique().tolist())
    assert len(train_values) == 17
    assert set(digits.x_val.unique().tolist()) <= train_values


def test_same_seed_gives_the_same_split():
    # image_size=8 is the native size, so the two configs differ only as cache keys.
    first = gc.load_data(gc.DataConfig(seed=3))
    second = gc.load_data(gc.DataConfig(seed=3, image_size=8))
    assert first is not second
    assert torch.equal(first.y_train, second.y_train) and torch.equal(first.y_val, second.y_val)
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.x_val, second.x_val)


def test_different_seed_gives_a_different_split():
    first, second = gc.load_data("digits", seed=1), gc.load_data("digits", seed=2)
    assert not torch.equal(first.y_val, second.y_val)


def test_resize_turns_8x8_digits_into_16x16(digits, digits16):
    assert digits16.x_train.shape == (len(digits.y_train), 1, 16, 16)
    assert torch.equal(digits16.y_train, digits.y_train)
    assert abs(float(digits16.x_train.mean())) < 1e-5


def test_max_train_caps_the_training_split_and_leaves_validation_alone(digits):
    small = gc.load_data("digits", max_train=100)
    assert len(small.y_train) == 100
    assert torch.equal(small.y_val, digits.y_val)


def test_val_fraction_sets_the_validation_size():
    data = gc.load_data("digits", val_fraction=0.1)
    assert len(data.y_val) == 180 and len(data.y_train) == N_DIGITS - 180


def test_load_data_accepts_a_config_with_overrides():
    data = gc.load_data(gc.DataConfig(max_train=50), image_size=16)
    assert data.x_train.shape == (50, 1, 16, 16)
    assert data.config == gc.DataConfig(max_train=50, image_size=16)


def test_image_data_to_its_own_device_is_the_same_object(digits):
    assert digits.to("cpu") is digits
    assert digits.device == torch.device("cpu")


def test_image_data_repr_gives_name_sizes_shape_and_classes(digits):
    text = repr(digits)
    for fragment in ("'digits'", f"{len(digits.y_train)} train", f"{len(digits.y_val)} val", "1x8x8", "10 classes"):
        assert fragment in text


# -- torchvision formats, written small ---------------------------------------------------

def write_idx_images(path, images: np.ndarray) -> None:
    """The idx3-ubyte format: magic 0x00000803, then N, H, W as big-endian int32, then bytes."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">iiii", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path, labels: np.ndarray) -> None:
    """The idx1-ubyte format: magic 0x00000801, then N, then one byte per label."""
    path.write_bytes(struct.pack(">ii", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def write_mnist_like(root, folder: str, n_train: int = 30, n_test: int = 10) -> None:
    """Uncompressed idx files in ``root/folder/raw/``; each image is filled with ``20 * label``."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.repeat((20 * labels)[:, None, None], 28 * 28, axis=1).reshape(n, 28, 28)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)


def assert_images_keep_their_labels(data: gc.ImageData) -> None:
    """Each fake image is constant at a value that grows with its label; normalization is affine."""
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        values = x[:, 0, 0, 0]
        assert torch.equal(x, values[:, None, None, None].expand_as(x))
        for label in y.unique():
            assert values[y == label].unique().numel() == 1
        by_label = [float(values[y == label][0]) for label in sorted(y.unique().tolist())]
        assert by_label == sorted(by_label)


@pytest.mark.parametrize("name, folder, first_class", [
    ("mnist", "MNIST", "0 - zero"),
    ("fashion-mnist", "FashionMNIST", "T-shirt/top"),
])
def test_mnist_style_dataset_loads_from_idx_files_without_download(tmp_path, name, folder, first_class):
    write_mnist_like(tmp_path, folder)
    data = gc.load_data(name, root=str(tmp_path), download=False, val_fraction=0.5)
    assert data.x_train.shape == (30, 1, 28, 28)  # the official training file, whatever val_fraction says
    assert len(data.y_val) == 10
    assert data.num_classes == 10 and data.class_names[0] == first_class
    assert_images_keep_their_labels(data)


def test_torchvision_datasets_validate_on_the_official_test_split(tmp_path):
    """The t10k file's images, in its order: comparable with published test accuracies."""
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(tmp_path, "MNIST", n_train=30, n_test=10)
    test_labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    write_idx_labels(raw / "t10k-labels-idx1-ubyte", test_labels)
    write_idx_images(raw / "t10k-images-idx3-ubyte",
                     np.repeat((20 * test_labels)[:, None, None], 28 * 28, axis=1).reshape(10, 28, 28))
    for seed in (0, 1):
        data = gc.load_data("mnist", root=str(tmp_path), download=False, seed=seed)
        assert data.y_val.tolist() == test_labels.tolist()
        assert sorted(data.y_train.tolist()) == sorted((np.arange(30) % 10).tolist())


def test_mnist_style_dataset_can_be_resized(tmp_path):
    write_mnist_like(tmp_path, "MNIST")
    data = gc.load_data("mnist", root=str(tmp_path), download=False, image_size=14)
    assert data.x_train.shape[1:] == (1, 14, 14)


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root, per_batch: int = 4) -> None:
    """Pickled batches in ``root/cifar-10-batches-py``: rows of 3072 bytes, channel-major.

    Channel 0 encodes the label, channel 1 varies only down the rows, channel 2 only
    across the columns, so a wrong axis order shows after loading.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels = [(index + k) % 10 for k in range(per_batch)]
        images = np.stack([np.stack([np.full((32, 32), 20 * label), 4 * rows, 4 * cols]) for label in labels])
        batch = {"data": images.astype(np.uint8).reshape(per_batch, 3072), "labels": labels}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR_CLASSES}, handle)


@pytest.fixture
def cifar10_without_checksums(monkeypatch):
    """torchvision's CIFAR10 checks md5 sums of the real files; this subclass skips the check
    (``None`` checksums) so that small fake batches load. gradcourse picks the class from
    ``torchvision.datasets`` by name when it loads, so the subclass stands in there."""
    datasets = import_torchvision().datasets
    original = datasets.CIFAR10

    class CIFAR10WithoutChecksums(original):
        train_list = [[name, None] for name, _ in original.train_list]
        test_list = [[name, None] for name, _ in original.test_list]
        meta = {**original.meta, "md5": None}

    monkeypatch.setattr(datasets, "CIFAR10", CIFAR10WithoutChecksums)


def test_cifar10_loads_from_pickled_batches_as_channels_first(tmp_path, cifar10_without_checksums):
    write_cifar10(tmp_path)
    data = gc.load_data("cifar10", root=str(tmp_path), download=False)
    assert data.x_train.shape == (20, 3, 32, 32) and len(data.y_val) == 4  # the 5 batches; test_batch
    assert data.class_names == tuple(CIFAR_CLASSES)
    label_channel, row_channel, col_channel = data.x_train[:, 0], data.x_train[:, 1], data.x_train[:, 2]
    assert torch.equal(label_channel, label_channel[:, :1, :1].expand_as(label_channel))
    assert torch.equal(row_channel, row_channel[:, :, :1].expand_as(row_channel))    # constant along a row
    assert torch.equal(col_channel, col_channel[:, :1, :].expand_as(col_channel))    # constant down a column
    assert bool((row_channel[:, 1:, 0] > row_channel[:, :-1, 0]).all())
    for channel in range(3):  # normalized per channel
        assert abs(float(data.x_train[:, channel].mean())) < 1e-5


def test_cifar10_without_checksum_override_is_reported_unavailable(tmp_path):
    """The real class rejects the fake files (md5 mismatch): that reads as 'not available'."""
    write_cifar10(tmp_path)
    with pytest.raises(gc.DatasetUnavailable):
        gc.load_data("cifar10", root=str(tmp_path), download=False)


# -- offline behaviour --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_offline_download_fails_fast_and_points_to_digits(tmp_path, name):
    start = time.perf_counter()
    with pytest.raises(gc.DatasetUnavailable) as excinfo:
        gc.load_data(name, root=str(tmp_path / "empty"))
    assert time.perf_counter() - start < 15.0
    message = str(excinfo.value)
    assert "digits" in message and name in message


def test_missing_dataset_with_download_false_says_where_it_looked(tmp_path):
    root = tmp_path / "nothing-here"
    with pytest.raises(gc.DatasetUnavailable) as excinfo:
        gc.load_data("mnist", root=str(root), download=False)
    message = str(excinfo.value)
    for fragment in ("mnist", str(root), "download=False", "digits", "GRADCOURSE_DATA"):
        assert fragment in message


def test_dataset_unavailable_is_a_runtime_error():
    assert issubclass(gc.DatasetUnavailable, RuntimeError)


def test_gradcourse_data_environment_variable_is_the_default_root(tmp_path, monkeypatch):
    write_mnist_like(tmp_path, "MNIST")
    monkeypatch.setenv("GRADCOURSE_DATA", str(tmp_path))
    assert data_root(gc.DataConfig(name="mnist")) == tmp_path
    data = gc.load_data("mnist", download=False, max_train=12)
    assert len(data.y_train) == 12


def test_root_argument_takes_precedence_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADCOURSE_DATA", str(tmp_path / "env"))
    assert data_root(gc.DataConfig(name="mnist", root=str(tmp_path / "arg"))) == tmp_path / "arg"


def test_load_data_reads_the_folder_gradcourse_data_names_at_call_time(tmp_path, monkeypatch):
    """Pointing GRADCOURSE_DATA at another folder in the same session loads that folder."""
    write_mnist_like(tmp_path / "a", "MNIST", n_train=30, n_test=10)
    write_mnist_like(tmp_path / "b", "MNIST", n_train=50, n_test=10)
    monkeypatch.setenv("GRADCOURSE_DATA", str(tmp_path / "a"))
    first = gc.load_data("mnist", download=False, seed=7)
    monkeypatch.setenv("GRADCOURSE_DATA", str(tmp_path / "b"))
    second = gc.load_data("mnist", download=False, seed=7)
    assert len(first.y_train) + len(first.y_val) == 40
    assert len(second.y_train) + len(second.y_val) == 60


def test_available_offline_reports_only_digits_for_an_empty_folder(tmp_path):
    assert gc.available_offline(str(tmp_path)) == {
        "digits": True, "mnist": False, "fashion-mnist": False, "cifar10": False}
    assert list(tmp_path.iterdir()) == [], "checking availability must not download anything"


def test_available_offline_sees_a_dataset_on_disk(tmp_path):
    write_mnist_like(tmp_path, "FashionMNIST")
    status = gc.available_offline(str(tmp_path))
    assert status["fashion-mnist"] is True and status["mnist"] is False


def test_chapter_data_is_the_digits_and_the_steps_by_default_and_says_where_it_trains(capsys):
    data, steps = gc.chapter_data(steps=150)
    assert data.name == "digits" and steps == 150
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == repr(data) and printed[1].startswith("training on: ")


@pytest.mark.parametrize("field, arguments", [("big", {"big": "yes"}), ("steps", {"steps": 0}),
                                              ("big_steps", {"big_steps": 2.5})])
def test_chapter_data_names_the_bad_field(field, arguments):
    with pytest.raises(gc.ConfigError, match=rf"chapter_data\.{field} = "):
        gc.chapter_data(**arguments)


@pytest.mark.skipif(not (REAL_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="the real MNIST test split is at ../shared/data/mnist only in CI")
def test_a_big_chapter_validates_on_the_real_mnist_test_split(tmp_path, monkeypatch, capsys):
    """``BIG = True`` through torchvision's own reader, on MNIST's real 10,000 test images (the
    training split here is a small stand-in: only the test split is at hand offline)."""
    write_mnist_like(tmp_path, "MNIST", n_train=30, n_test=10)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "MNIST" / "raw" / name).write_bytes(gzip.decompress((REAL_MNIST / f"{name}.gz").read_bytes()))
    monkeypatch.setenv("GRADCOURSE_DATA", str(tmp_path))
    data, steps = gc.chapter_data(True, steps=150)
    assert data.name == "mnist" and steps == 600
    assert data.x_val.shape == (10_000, 1, 28, 28)
    assert data.y_val[:5].tolist() == [7, 2, 1, 0, 4]  # the file's order, as published
    assert torch.bincount(data.y_val, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert capsys.readouterr().out.startswith("ImageData('mnist': 30 train / 10000 val, 1x28x28")
