"""Real image datasets, held as tensors so a training step costs no loader overhead.

``digits`` (scikit-learn's 1,797 bundled 8x8 handwritten digits) works offline and is
the default. ``mnist``, ``fashion-mnist`` and ``cifar10`` come through torchvision and
are downloaded when there is a network; offline they fail within seconds with a
message that points back to ``digits``.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from . import _validate as check

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
DATA_ENV = "GRADCOURSE_DATA"
DOWNLOAD_TIMEOUT_S = 5.0


class DatasetUnavailable(RuntimeError):
    """A dataset is neither on disk nor downloadable right now."""


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on, and how to split them.

    Attributes:
        name: one of ``digits`` (default, offline), ``mnist``, ``fashion-mnist``, ``cifar10``.
        image_size: side length to resize to (e.g. 16 turns the 8x8 digits into 16x16), or
            ``None`` for the native size.
        val_fraction: share of the examples held out for validation (``digits`` only: it
            has no official split). The torchvision datasets validate on their official
            test split (10,000 images), so an accuracy here is comparable with published ones.
        max_train: keep at most this many training examples (``None``: all of them).
        root: folder for downloaded datasets; default ``$GRADCOURSE_DATA`` or
            ``~/.cache/gradcourse/data``.
        download: try to download a torchvision dataset that is not on disk.
        seed: seed of the deterministic train/validation split of ``digits`` (and of which
            training examples ``max_train`` keeps).
    """

    name: str = "digits"
    image_size: int | None = None
    val_fraction: float = 0.2
    max_train: int | None = None
    root: str | None = None
    download: bool = True
    seed: int = 0

    def __post_init__(self):
        owner = "DataConfig"
        check.choice(owner, "name", self.name, DATASETS)
        if self.image_size is not None:
            check.integer(owner, "image_size", self.image_size, 4, 256)
        check.number(owner, "val_fraction", self.val_fraction, 0.0, 0.9, low_open=True)
        if self.max_train is not None:
            check.integer(owner, "max_train", self.max_train, 10)
        if self.root is not None and not isinstance(self.root, (str, os.PathLike)):
            raise check.ConfigError(f"{owner}.root = {self.root!r} must be a folder path (str) or None")
        check.boolean(owner, "download", self.download)
        check.integer(owner, "seed", self.seed, 0)


@dataclass
class ImageData:
    """A dataset split into training and validation tensors (images normalized per channel)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = field(default=())
    config: DataConfig | None = field(default=None, repr=False)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device) -> "ImageData":
        """The same data on ``device`` (no copy when it is already there)."""
        if torch.device(device) == self.device:
            return self
        move = lambda t: t.to(device)  # noqa: E731
        return ImageData(self.name, move(self.x_train), move(self.y_train), move(self.x_val),
                         move(self.y_val), self.num_classes, self.class_names, self.config)

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}: {len(self.y_train)} train / {len(self.y_val)} val, "
                f"{self.in_channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes, "
                f"on {self.device})")


def load_data(config: DataConfig | str | None = None, device=None, **overrides) -> ImageData:
    """Load a dataset as tensors, split deterministically, on ``device`` (default CPU).

    ``load_data("digits", image_size=16)`` is short for
    ``load_data(DataConfig(name="digits", image_size=16))``.
    """
    if config is None or isinstance(config, str):
        config = DataConfig(**({"name": config} if config else {}), **overrides)
    elif overrides:
        from dataclasses import replace
        config = replace(config, **overrides)
    if config.name != "digits" and config.root is None:
        # Resolve the folder now, so the in-process cache sees a changed GRADCOURSE_DATA.
        from dataclasses import replace
        config = replace(config, root=str(data_root(config)))
    data = _load_cpu(config)
    return data.to(device) if device is not None else data


def chapter_data(big: bool = False, steps: int = 150, big_steps: int | None = None) -> tuple[ImageData, int]:
    """A chapter's data and number of training steps, at one of two scales, printed with
    the device its runs will train on.

    - ``big=False``: scikit-learn's 8x8 digits (bundled, works offline) and ``steps``
      steps. The book is built at this scale.
    - ``big=True``: MNIST at 28x28 (downloaded once, validated on its official test split)
      and ``big_steps`` steps, 4 x ``steps`` unless given: meant for a GPU, e.g. in Colab.

    ``data, STEPS = gc.chapter_data(BIG, steps=150)`` opens most chapters.
    """
    from .device import describe_device, pick_device

    check.boolean("chapter_data", "big", big)
    check.integer("chapter_data", "steps", steps, 1)
    if big_steps is not None:
        check.integer("chapter_data", "big_steps", big_steps, 1)
    data = load_data("mnist" if big else "digits")
    print(data)
    print("training on:", describe_device(pick_device()))
    return data, ((big_steps or 4 * steps) if big else steps)


def data_root(config: DataConfig) -> Path:
    """The folder torchvision datasets are read from and downloaded to."""
    root = config.root or os.environ.get(DATA_ENV) or Path.home() / ".cache" / "gradcourse" / "data"
    return Path(root).expanduser()


def available_offline(root: str | None = None) -> dict[str, bool]:
    """Which datasets can be loaded right now without a download."""
    status = {"digits": _sklearn_available()}
    for name in DATASETS[1:]:
        try:
            _load_cpu(DataConfig(name=name, root=root, download=False))
            status[name] = True
        except DatasetUnavailable:
            status[name] = False
    return status


@lru_cache(maxsize=8)
def _load_cpu(config: DataConfig) -> ImageData:
    generator = torch.Generator().manual_seed(config.seed)
    if config.name == "digits":
        images, labels, classes = _digits()
        order = torch.randperm(len(labels), generator=generator)
        n_val = max(1, round(config.val_fraction * len(labels)))
        x_val, y_val = images[order[:n_val]], labels[order[:n_val]]
        x_train, y_train = images[order[n_val:]], labels[order[n_val:]]
    else:
        (x_train, y_train), (x_val, y_val), classes = _torchvision_dataset(config)
        order = torch.randperm(len(y_train), generator=generator)
        x_train, y_train = x_train[order], y_train[order]
    if config.max_train is not None:
        x_train, y_train = x_train[: config.max_train], y_train[: config.max_train]
    x_train, x_val = _resize(x_train.float(), config.image_size), _resize(x_val.float(), config.image_size)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ImageData(config.name, (x_train - mean) / std, y_train.long(), (x_val - mean) / std, y_val.long(),
                     len(classes), tuple(classes), config)


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or size == images.shape[-1]:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1])


def _sklearn_available() -> bool:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        return False
    return True


def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetUnavailable("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0
    return images, torch.from_numpy(bunch.target), [str(c) for c in range(10)]


_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _torchvision_dataset(config: DataConfig):
    from ._torchvision import import_torchvision

    datasets = import_torchvision().datasets
    cls = getattr(datasets, _TORCHVISION_CLASSES[config.name])
    root = data_root(config)
    parts = []
    for train in (True, False):
        try:
            parts.append(cls(str(root), train=train, download=False))
        except RuntimeError:
            if not config.download:
                raise DatasetUnavailable(
                    f"{config.name} is not in {root} and download=False. The offline default is "
                    f"DataConfig(name='digits'); or set {DATA_ENV} to a folder that holds {config.name}.") from None
            parts.append(_download(cls, root, train, config.name))
    splits = []
    for part in parts:                          # the official training split, then the test split
        data = torch.as_tensor(part.data)
        if data.ndim == 3:                      # MNIST-style: N x H x W, uint8
            data = data.unsqueeze(1)
        else:                                   # CIFAR: N x H x W x C, uint8
            data = data.permute(0, 3, 1, 2)
        splits.append((data.float() / 255.0, torch.as_tensor(part.targets)))
    return splits[0], splits[1], list(parts[0].classes)


def _download(cls, root: Path, train: bool, name: str):
    """Download with a short socket timeout so an offline machine fails in seconds, not minutes."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return cls(str(root), train=train, download=True)
    except Exception as error:  # URLError, timeouts, checksum failures: all mean "not available"
        raise DatasetUnavailable(
            f"could not download {name} into {root} ({type(error).__name__}: {error}). "
            f"Offline, use the bundled default: DataConfig(name='digits').") from None
    finally:
        socket.setdefaulttimeout(previous)
