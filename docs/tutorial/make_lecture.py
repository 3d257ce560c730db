"""Write docs/tutorial/lecture.ipynb, the tutorial notebook, from the cells below.

The notebook is stored without outputs; the documentation build (mkdocs-jupyter,
``execute: true``) runs it. Run ``python docs/tutorial/make_lecture.py`` after editing
a cell here, and commit both files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """# The lecture, step by step

This notebook builds the lecture's convolutional network from its parts: how padding
sets the output size, how im2col turns a convolution into one matrix product, how
that product runs for a whole batch, how the backward pass is checked numerically,
and then the one-convolution network trained on MNIST, with the filters it learned.
Everything runs on NumPy here; every op takes the arrays of any backend.

It needs `pip install -e ".[cli]"` (matplotlib for the pictures, scikit-learn for
the small digits set used when MNIST is not at hand).""",
    ),
    (
        "code",
        """import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import xpconv as xc
import xpconv.ops as F
from xpconv.backends import portable

np.set_printoptions(linewidth=110)""",
    ),
    (
        "md",
        """## 1. Padding and the output size

A convolution slides a K x K kernel over the image. Along one axis an input of length
I, padded with P zeros in total (both sides together), with stride S and dilation D,
gives

$$O = \\left\\lfloor \\frac{I + P - D (K - 1) - 1}{S} \\right\\rfloor + 1 .$$

On a 5 x 5 image with a 3 x 3 kernel:""",
    ),
    (
        "code",
        """for pad_each_side in (0, 1, 2):
    for stride in (1, 2):
        out = F.conv_output_size(5, 3, stride, 2 * pad_each_side, 1)
        print(f"padding {pad_each_side} per side, stride {stride}: output {out} x {out}")""",
    ),
    (
        "md",
        """Padding 1 keeps the 5 x 5 size at stride 1: that is `padding="same"`. The
padded image, with its zero border:""",
    ),
    (
        "code",
        """image = np.arange(1, 26, dtype=np.float64).reshape(5, 5)
padded = np.pad(image, 1)
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
for ax, a, title in zip(axes, (image, padded), ("5 x 5 image", "padded by 1")):
    ax.imshow(a, cmap="Blues")
    for (i, j), v in np.ndenumerate(a):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()""",
    ),
    (
        "md",
        """## 2. im2col, drawn

im2col copies every 3 x 3 patch of the padded image into one column. With padding 1
the 5 x 5 image has 25 patches (one per output pixel), each of 9 values: a 9 x 25
matrix. xpconv's columns are ordered output row, output column, then batch (the
batch innermost), the order the matrix product writes.""",
    ),
    (
        "code",
        """x = image.reshape(1, 1, 5, 5)  # (N, C, H, W)
geom = F.conv_geometry(x.shape, (1, 1, 3, 3), stride=1, padding=1)
cols = portable.im2col(np, x, geom)
print("columns:", cols.shape, " output:", geom.out)

fig, ax = plt.subplots(figsize=(10, 4))
ax.imshow(cols, cmap="Blues")
for (i, j), v in np.ndenumerate(cols):
    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6)
ax.set_xlabel("one column per output pixel (25)")
ax.set_ylabel("kernel tap (9)")
ax.set_title("im2col of the 5 x 5 image, 3 x 3 kernel, padding 1")
plt.show()""",
    ),
    (
        "md",
        """Column 0 is the patch centred on pixel 1 (top left): five of its nine taps fall in
the padding and read 0. Column 6 is the patch centred on pixel 7, wholly inside.

## 3. The convolution as one batch matrix product

With the kernel flattened to a row, the convolution is `kernel_row @ cols`. For a
batch of N images and O filters the same holds with an (O, C·K·K) weight matrix and
(C·K·K, OH·OW·N) columns: one large matrix product for the whole batch.""",
    ),
    (
        "code",
        """rng = np.random.default_rng(0)
batch = rng.normal(size=(4, 3, 5, 5))  # N=4 images, C=3 channels
weight = rng.normal(size=(8, 3, 3, 3))  # O=8 filters
geom = F.conv_geometry(batch.shape, weight.shape, padding=1)
cols = portable.im2col(np, batch, geom)  # (3*3*3, 5*5*4)
product = weight.reshape(8, -1) @ cols  # (8, 100): one matmul for the batch
by_matmul = product.reshape(8, 5, 5, 4).transpose(3, 0, 1, 2)  # (N, O, OH, OW)
by_op = F.conv2d(batch, weight, padding=1)
print(cols.shape, product.shape, by_op.shape)
print("largest difference from F.conv2d:", np.abs(by_matmul - by_op).max())
assert np.allclose(by_matmul, by_op)""",
    ),
    (
        "md",
        """## 4. Gradients, checked numerically

Every op has an explicit backward function. `xc.tools.gradcheck` compares it with
central finite differences in float64, for every input: here the image batch, the
weight and the bias of `conv2d`, and then every parameter of a small network.""",
    ),
    (
        "code",
        """bias = rng.normal(size=8)


def conv(x, w, b):
    return F.conv2d(x, w, b, padding=1)


def conv_backward(grad, x, w, b):
    return F.conv2d_backward(grad, x, w, padding=1)


report = xc.tools.gradcheck(conv, batch, weight, bias, backward=conv_backward)
print(report)

net = xc.Sequential(
    [xc.Conv2D(4, 3, padding=1, activation="tanh"), xc.Flatten(), xc.Dense(3)],
    input_shape=(1, 6, 6),
    dtype="float64",
    seed=0,
)
print(xc.tools.gradcheck(net, rng.normal(size=(2, 1, 6, 6))).worst())""",
    ),
    (
        "md",
        """## 5. The one-convolution network on MNIST

The lecture's network: one 5 x 5 convolution with 16 filters and `padding="same"`,
tanh, and a dense layer to the 10 classes, trained with SGD, momentum 0.9 and a
learning rate decaying exponentially from 0.1 to 0.05, batches of 60, on pixels
scaled to [0, 1], as `xpconv train` runs it.

The data: `$XPCONV_DATA` if set, else the `shared/data` folder beside the repository
if there is one; otherwise the small scikit-learn digits stand in, and the cell says
so. To keep the page quick, it trains one epoch on the first 12,000 training images.""",
    ),
    (
        "code",
        """from xpconv.data.datasets import DatasetError, digits, mnist


def find_mnist_dir():
    if os.environ.get("XPCONV_DATA"):
        return Path(os.environ["XPCONV_DATA"])
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "mkdocs.yml").is_file():  # the repository's root
            shared = parent.parent / "shared" / "data"
            return shared if (shared / "mnist").is_dir() else None
    return None


data_dir = find_mnist_dir()
try:
    if data_dir is None:
        raise DatasetError("no MNIST directory found")
    data = mnist(data_dir, download=False, progress=False)
    name = "MNIST"
except DatasetError as exc:
    print(f"NOTE: MNIST is not available here ({exc}); using the scikit-learn digits.")
    data = digits()
    name = "digits"
limit = 12_000
x_train, y_train = data.x_train[:limit], data.y_train[:limit]
print(f"{name}: training on {len(y_train)} images, testing on {len(data.y_test)}")""",
    ),
    (
        "code",
        """model = xc.models.zoo.lecture(seed=0)
model.summary()
optimizer = xc.SGD(0.01, momentum=0.9, final_lr=0.005, decay="exponential")  # the recipe
trainer = xc.Trainer(model, optimizer, progress=False)
start = time.perf_counter()
history = trainer.fit(
    x_train, y_train, epochs=1, batch_size=60, validation_data=(data.x_test, data.y_test)
)
print(f"one epoch in {time.perf_counter() - start:.1f} s")
print(history.table())
assert history.val_accuracy[-1] > 0.85""",
    ),
    (
        "md",
        """## 6. The filters it learned

The 16 first-layer kernels, each 5 x 5: many have become stroke and edge detectors
of several orientations.""",
    ),
    (
        "code",
        """_, conv = xc.tools.plots.first_conv_layer(model)  # after the Standardize layer
kernels = model.backend.to_numpy(conv.params["weight"].value)  # (16, 1, 5, 5)
fig, axes = plt.subplots(2, 8, figsize=(10, 2.8))
for k, ax in enumerate(axes.flat):
    ax.imshow(kernels[k, 0], cmap="RdBu_r")
    ax.set_title(f"filter {k}", fontsize=8)
    ax.axis("off")
plt.show()

test_image = data.x_test[:1]
standardized = (test_image - 0.1307) / 0.3081  # what the model's first layer does
maps = np.tanh(F.conv2d(standardized, kernels, padding="same"))[0]  # before the bias
fig, axes = plt.subplots(2, 9, figsize=(11, 2.8))
axes.flat[0].imshow(test_image[0, 0], cmap="gray")
axes.flat[0].set_title("input", fontsize=8)
for k, ax in enumerate(axes.flat[1:17]):
    ax.imshow(maps[k], cmap="gray")
    ax.set_title(f"map {k}", fontsize=8)
for ax in axes.flat:
    ax.axis("off")
plt.show()""",
    ),
    (
        "md",
        """The same network from the command line, with its pictures written to `runs/`:
`xpconv train`. Next: the [user guide](../guide/models.md).""",
    ),
]


def build() -> Any:
    """The notebook (an ``nbformat`` node) of :data:`CELLS`, without outputs."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating changes nothing
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    import nbformat

    path = Path(__file__).with_name("lecture.ipynb")
    nbformat.write(build(), path)
    print(f"wrote {path}")
