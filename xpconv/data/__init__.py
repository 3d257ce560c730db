"""Datasets (find, download with checksum, parse IDX) and augmentation."""

from __future__ import annotations

from xpconv.data.augment import (
    Augment,
    augment_for_dataset,
    augment_from_config,
)
from xpconv.data.datasets import (
    CHECKSUMS,
    DATASETS,
    MIRRORS,
    Dataset,
    DatasetError,
    digits,
    fashion_mnist,
    get_cache_dir,
    load_dataset,
    mnist,
)

__all__ = [
    "Augment",
    "CHECKSUMS",
    "DATASETS",
    "Dataset",
    "DatasetError",
    "MIRRORS",
    "augment_for_dataset",
    "augment_from_config",
    "digits",
    "fashion_mnist",
    "get_cache_dir",
    "load_dataset",
    "mnist",
]
