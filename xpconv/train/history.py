"""History: the per-epoch record of a training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["History"]


@dataclass
class History:
    """Per-epoch metrics. Validation entries are ``None`` in epochs without evaluation."""

    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_accuracy: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)
    step_losses: list[list[float]] = field(default_factory=list)  # every step, per epoch

    def as_dict(self) -> dict[str, list]:
        return asdict(self)

    def table(self) -> str:
        """A short text table, one row per epoch."""
        head = f"{'epoch':>5} {'loss':>8} {'acc':>7} {'val_loss':>9} {'val_acc':>8} {'img/s':>8}"
        rows = [head]
        for i, epoch in enumerate(self.epoch):
            vl, va = self.val_loss[i], self.val_accuracy[i]
            rows.append(
                f"{epoch:>5} {self.loss[i]:>8.4f} {self.accuracy[i]:>7.2%} "
                f"{'' if vl is None else f'{vl:.4f}':>9} {'' if va is None else f'{va:.2%}':>8} "
                f"{self.images_per_second[i]:>8.0f}"
            )
        return "\n".join(rows)
