"""The text table of a model: each layer's output shape and parameter count."""

from __future__ import annotations

from typing import Any

__all__ = ["summary_table"]


def summary_table(model: Any) -> str:
    """A table of a built model's layers (and the inner layers of blocks): name and
    description, output shape (None, *shape) and parameter count, then the totals,
    backend and dtype."""
    rows = [("layer", "output shape", "params")]
    rows.append(("input", str((None, *model.input_shape)), ""))
    for layer in model.layers:
        rows.append(_row(layer.name, layer))
        for inner, child in layer.children() if hasattr(layer, "children") else ():
            rows.append(_row(f"  {layer.name}.{inner}", child))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = "-" * (sum(widths) + 4)
    text = [line]
    for i, row in enumerate(rows):
        text.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
        if i == 0:
            text.append(line)
    text += [
        line,
        f"total parameters: {model.num_parameters():,}   backend: {model.backend.label}   "
        f"dtype: {model.dtype_name}",
    ]
    return "\n".join(text)


def _row(name: str, layer: Any) -> tuple[str, str, str]:
    return (
        f"{name}: {layer.describe()}",
        str((None, *layer.output_shape)),
        f"{layer.num_parameters():,}",
    )
