"""The ``xpconv`` command line: train a network, evaluate a checkpoint, export it.

    xpconv train                                   # lecture model, MNIST, one epoch
    xpconv train --model lenet --epochs 5 --backend torch --device cuda
    xpconv train --model resnet --dataset fashion-mnist --epochs 5 --augment
    xpconv train --resume runs/lecture-mnist-20260101-120000/training.npz --epochs 3
    xpconv evaluate runs/lecture-mnist-20260101-120000/model.npz --backend array_api_strict
    xpconv export runs/lecture-mnist-20260101-120000/model.npz model.onnx --check

``train`` writes into its output directory: ``metrics.json``, ``model.npz`` (the
trained model), ``training.npz`` (everything needed to resume, rewritten after every
epoch) and, when matplotlib is installed, ``curves.png``, ``filters.png``,
``feature_maps.png`` and ``confusion.png``.

Exit status: 0 on success, 2 for a bad option (argparse), 1 for an error of the
library (missing data, a broken checkpoint, a backend that cannot be used), 130 when
interrupted.

One module per command: :mod:`~xpconv.cli.train` (with :mod:`~xpconv.cli.runs` for run
directories and records and :mod:`~xpconv.cli.report` for what a run writes at its
end), :mod:`~xpconv.cli.evaluate`, :mod:`~xpconv.cli.export`; the parser in
:mod:`~xpconv.cli.parser`, what they share in :mod:`~xpconv.cli.common`, the entry
point in :mod:`~xpconv.cli.app`.
"""

from __future__ import annotations

from xpconv.cli.app import main
from xpconv.cli.common import TRAIN_DEFAULTS
from xpconv.cli.parser import build_parser

__all__ = ["TRAIN_DEFAULTS", "build_parser", "main"]
