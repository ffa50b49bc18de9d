"""Heatmaps of what a model attends to (matplotlib, no display): one head with the tokens on both axes,
every head of a layer, a layers x heads overview, a per-head summary matrix, and position tables.

Each function returns the matplotlib Figure; ``save`` writes one to a PNG and closes it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


FALLBACK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Noto Sans CJK TC", "Source Han Sans SC",
                  "WenQuanYi Zen Hei", "Droid Sans Fallback", "Noto Sans", "Noto Sans Arabic", "Noto Sans Hebrew",
                  "Noto Sans Devanagari", "Noto Sans Thai", "Noto Emoji", "Symbola")  # fmt: skip
"""Fonts that token labels fall back to, in order, where installed (DejaVu Sans, matplotlib's own,
covers Latin, Greek and Cyrillic; a CJK, Arabic or emoji token needs one of these to be drawn)."""


@functools.cache
def _fonts() -> tuple[tuple[str, ...], frozenset[int]]:
    """The font families token labels are drawn with and the code points they cover between them."""
    from matplotlib import font_manager, ft2font

    installed = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    families = tuple(name for name in ("DejaVu Sans", *FALLBACK_FONTS) if name in installed)
    covered = set()
    for name in families:
        covered |= set(ft2font.FT2Font(installed[name]).get_charmap())
    return families, frozenset(covered)


def labels(tokens: list[str]) -> list[str]:
    """Token labels as they can be drawn: a character no installed font has is written as its code
    point (U+65E5); matplotlib would draw an empty box and warn once per such character."""
    covered = _fonts()[1]
    return ["".join(c if ord(c) in covered or c.isspace() else f"U+{ord(c):04X}" for c in t) for t in tokens]


def _ticks(ax, queries: list[str], keys: list[str], size: float, outer: tuple[bool, bool] = (True, True)) -> None:
    """Keys across (turned upright), queries down, with the fonts that draw them."""
    family = list(_fonts()[0])
    ax.set_xticks(range(len(keys)), labels(keys) if outer[0] else [], rotation=90, family=family,
                  fontsize=_label_size(len(keys)) * size)  # fmt: skip
    ax.set_yticks(range(len(queries)), labels(queries) if outer[1] else [], family=family,
                  fontsize=_label_size(len(queries)) * size)  # fmt: skip


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _plt().close(fig)
    return path


def _label_size(n: int) -> float:
    return max(4.0, min(10.0, 300.0 / max(n, 1)))


def head(weights: torch.Tensor, tokens: list[str], title: str, keys: list[str] | None = None):
    """(T, S) weights of one head: queries down, keys across, each axis labelled with its tokens
    (``keys``: the keys' where they are not the queries, as in cross-attention)."""
    plt = _plt()
    keys = tokens if keys is None else keys
    n, m = len(tokens), len(keys)
    side = min(14.0, 3.0 + 0.22 * max(n, m))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=110)
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto" if n != m else "equal")
    _ticks(ax, tokens, keys, 1.0)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    fig.tight_layout()
    return fig


def heads_grid(weights: torch.Tensor, tokens: list[str], title: str, keys: list[str] | None = None):
    """(H, T, S) weights of every head of one layer, side by side, tokens on the outer axes
    (``keys`` across where they are not the queries)."""
    plt = _plt()
    keys = tokens if keys is None else keys
    H, n, m = weights.shape[0], len(tokens), len(keys)
    cols = min(H, 4)
    rows = -(-H // cols)
    panel = min(5.0, 1.5 + 0.1 * max(n, m))
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols + 1.0, panel * rows + 0.6), dpi=100, squeeze=False)
    image = None
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        image = ax.imshow(weights[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto" if n != m else "equal")
        ax.set_title(f"head {h}", fontsize=9)
        _ticks(ax, tokens, keys, 0.7, outer=(h // cols == rows - 1, h % cols == 0))
    fig.suptitle(title)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="attention weight")
    return fig


def overview(weights: list[torch.Tensor], title: str):
    """One small unlabelled heatmap per layer (rows) and head (columns): the patterns at a glance
    (diagonal: the token itself; sub-diagonal: the previous token; first column: a sink)."""
    plt = _plt()
    L, H = len(weights), weights[0].shape[0]
    fig, axes = plt.subplots(L, H, figsize=(1.3 * H + 1.0, 1.3 * L + 0.8), dpi=100, squeeze=False)
    for layer, row in enumerate(axes):
        for h, ax in enumerate(row):
            ax.imshow(weights[layer][h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    fig.suptitle(title)
    return fig


def matrix(values: torch.Tensor, title: str, label: str):
    """(L, H) values per layer and head, each cell written in."""
    plt = _plt()
    L, H = values.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * H + 2.0), max(3.0, 0.5 * L + 1.5)), dpi=110)
    image = ax.imshow(values.numpy(), cmap="magma", aspect="auto")
    ax.set_xticks(range(H), [str(h) for h in range(H)])
    ax.set_yticks(range(L), [str(layer) for layer in range(L)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if L * H <= 256:
        middle = float(values.min() + values.max()) / 2
        for layer in range(L):
            for h in range(H):
                v = float(values[layer, h])
                ax.text(h, layer, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > middle else "white")  # fmt: skip
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return fig


def positions(table: torch.Tensor, titles: list[str], title: str):
    """(G, n, n) position tables (one per head for a bias, else one), position i down, j across."""
    plt = _plt()
    G = table.shape[0]
    cols = min(G, 4)
    rows = -(-G // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.0, 3.4 * rows + 0.6), dpi=100, squeeze=False)
    image = None
    for g, ax in enumerate(axes.flat):
        if g >= G:
            ax.axis("off")
            continue
        image = ax.imshow(table[g].numpy(), cmap="coolwarm")
        if G > 1:
            ax.set_title(titles[g], fontsize=9)
        ax.set_xlabel("position j", fontsize=8)
        ax.set_ylabel("position i", fontsize=8)
        if G > 1:  # biases differ in scale from head to head: a bar each
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if G == 1:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.046, pad=0.04)
    fig.suptitle(title)
    return fig
