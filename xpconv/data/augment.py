"""Data augmentation: random crops with padding and horizontal flips, per batch, on the host.

    augment = Augment(crop_padding=2, flip=True)
    trainer = Trainer(model, optimizer, augment=augment)

Every random number comes from the generator the caller passes (the trainer's seeded
shuffling generator), so a resumed run and a run on another backend see the very same
batches: the augmented batch is computed on the host with NumPy and then moved to the
model's device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Augment", "augment_for_dataset", "augment_from_config"]

#: Datasets whose images must not be mirrored (a flipped digit is another glyph).
NO_FLIP = ("mnist", "digits")


class Augment:
    """Random crop after zero padding, and random horizontal flip, of (N, C, H, W) images.

    Args:
        crop_padding: pad every side with this many pixels of ``fill``, then crop a random
            H x W window (a random shift of up to ``crop_padding`` pixels each way); 0: off.
        flip: mirror each image left-right with probability 1/2.
        fill: the padding value (0, the background of images scaled to [0, 1]).
    """

    def __init__(self, crop_padding: int = 0, flip: bool = False, fill: float = 0.0) -> None:
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding: expected an int >= 0, got {crop_padding!r}")
        if not isinstance(flip, bool):
            raise TypeError(f"flip: expected a bool, got {flip!r}")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not np.isfinite(fill):
            raise ValueError(f"fill: expected a finite number, got {fill!r}")
        self.crop_padding, self.flip, self.fill = crop_padding, flip, float(fill)

    @property
    def active(self) -> bool:
        """Whether the augmentation changes anything."""
        return self.crop_padding > 0 or self.flip

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new augmented batch (N, C, H, W) from host images ``x``; ``x`` is not modified.

        Draws, in this order: the vertical and horizontal crop offsets (N each), then the
        flip coin (N), from ``rng``.
        """
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(
                f"x: expected images (N, C, H, W) to augment, got shape {tuple(x.shape)}"
            )
        n, c, h, w = x.shape
        out = x
        p = self.crop_padding
        if p:
            padded = np.full((n, c, h + 2 * p, w + 2 * p), self.fill, dtype=x.dtype)
            padded[:, :, p : p + h, p : p + w] = x
            oy = rng.integers(0, 2 * p + 1, size=n)
            ox = rng.integers(0, 2 * p + 1, size=n)
            rows = (oy[:, None] + np.arange(h))[:, None, :, None]  # type: ignore[index]
            cols = (ox[:, None] + np.arange(w))[:, None, None, :]  # type: ignore[index]
            out = padded[
                np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols
            ]
        if self.flip:
            mirror = rng.random(n) < 0.5
            out = np.array(out, copy=True) if out is x else out
            out[mirror] = out[mirror][..., ::-1]
        return out if out is not x else x.copy()

    def get_config(self) -> dict[str, Any]:
        return {"crop_padding": self.crop_padding, "flip": self.flip, "fill": self.fill}

    def describe(self) -> str:
        parts = []
        if self.crop_padding:
            parts.append(f"random crop (padding {self.crop_padding})")
        if self.flip:
            parts.append("horizontal flip")
        return ", ".join(parts) or "none"

    def __repr__(self) -> str:
        return f"Augment(crop_padding={self.crop_padding}, flip={self.flip}, fill={self.fill:g})"


def augment_from_config(config: dict[str, Any] | None) -> Augment | None:
    """An :class:`Augment` from :meth:`Augment.get_config` output (``None`` stays ``None``)."""
    return None if config is None else Augment(**config)


def augment_for_dataset(dataset: str, crop_padding: int = 2) -> Augment:
    """The usual augmentation for ``dataset``: random crops, and flips except for digits."""
    return Augment(crop_padding=crop_padding, flip=dataset not in NO_FLIP)
