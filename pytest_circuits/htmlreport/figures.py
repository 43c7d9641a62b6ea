"""Figures of the HTML report, drawn with matplotlib's Agg canvas and returned as base64 PNG.

matplotlib is imported inside each function (never at module load) and pyplot is not used at
all: a Figure on an Agg canvas leaves the user's global backend and open figures alone.

Every label is drawn as literal text: model, task and component names are the user's (a model
path such as ``rc$\\foo$`` or a name with ``_{``), and matplotlib would otherwise read ``$...$``
as mathtext (and fail on it) or hand the label to LaTeX when the user's rcParams ask for usetex.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

#: Okabe-Ito colours (safe for the common colour-vision deficiencies).
OKABE_ITO = {
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "grey": "#999999",
    "black": "#000000",
}
#: Sequential map of the drop heatmaps: perceptually uniform and colour-blind safe.
DROP_CMAP = "viridis"
#: Heatmap colours span 0..100 points: the paper's clamped drop m_i, so one colour means the
#: same cost in every model and section. Cells outside the range keep their true number.
DROP_RANGE = (0.0, 100.0)


@dataclass(frozen=True)
class Grid:
    """One model's drops laid out as the heatmap draws them (NaN: not swept)."""

    label: str
    heads: np.ndarray  # [layers, heads]
    mlps: np.ndarray  # [layers]


def drop_grid(label: str, effects: Sequence[Any], n_layers: int, n_heads: int) -> Grid:
    """Place each swept component's unclamped drop at its layer (and head)."""
    heads = np.full((n_layers, n_heads), np.nan)
    mlps = np.full(n_layers, np.nan)
    for effect in effects:
        if effect.head is None:
            mlps[effect.layer] = effect.drop
        else:
            heads[effect.layer, effect.head] = effect.drop
    return Grid(label, heads, mlps)


def _matplotlib() -> Any:
    """The matplotlib module, or an ImportError that says how to install it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            f"the HTML report draws its figures with matplotlib, which is not installed "
            f"({exc}); install it with pip install 'pytest-circuits[report]' (or "
            "matplotlib>=3.8)"
        ) from exc
    return matplotlib


#: The rcParams every figure is drawn under: text is shown as given, never parsed as mathtext
#: (``$x^2$``, ``\\foo``) nor typeset by LaTeX, whatever the user's own settings say.
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}

_Draw = TypeVar("_Draw", bound=Callable[..., str])


def literal_text(draw: _Draw) -> _Draw:
    """Run a figure function (which draws and encodes its figure) under :data:`LITERAL_TEXT`.

    Text objects read these settings when they are made, and tick labels are made while the
    figure is saved, so the whole function, saving included, runs inside the context; the
    user's rcParams are restored after it.
    """

    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> str:
        with _matplotlib().rc_context(LITERAL_TEXT):
            return draw(*args, **kwargs)

    return drawn  # type: ignore[return-value]


def shown(text: str) -> str:
    """A user's name as a figure prints it: control characters other than a newline (a tab, a
    carriage return, a NUL), which the fonts have no glyph for, become spaces."""
    return "".join(" " if unicodedata.category(ch) == "Cc" and ch != "\n" else ch
                   for ch in str(text))


def _figure(width: float, height: float) -> Any:
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_base64(fig: Any, dpi: int = 110) -> str:
    """The figure as a base64 PNG (for ``<img src="data:image/png;base64,...">``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _text_colour(value: float) -> str:
    """Black on the bright end of viridis, white on the dark end."""
    low, high = DROP_RANGE
    share = (min(max(value, low), high) - low) / (high - low)
    return "black" if share > 0.55 else "white"


@literal_text
def heatmaps(grids: Sequence[Grid], *, annotate: bool | None = None, scale: float = 1.0) -> str:
    """Per-head drops (layers x heads) of each model with their MLP drops beside them, side by
    side on one colour scale, as a base64 PNG."""
    from matplotlib.colors import Normalize

    n_layers = max(g.heads.shape[0] for g in grids)
    n_heads = max(g.heads.shape[1] for g in grids)
    if annotate is None:  # numbers stay legible up to GPT-2 small's 12 heads
        annotate = n_heads <= 16 and n_layers <= 16
    cell = 0.55 if n_heads <= 16 else 0.22
    width = sum(g.heads.shape[1] + 1.6 for g in grids) * cell + 1.4
    height = n_layers * cell + 1.3
    fig = _figure(width * scale, height * scale)
    ratios: list[float] = []
    for i, g in enumerate(grids):
        ratios += [g.heads.shape[1], 1.0]
        if i < len(grids) - 1:
            ratios.append(0.6)  # a gap between models
    ratios.append(0.35)
    grid_spec = fig.add_gridspec(1, len(ratios), width_ratios=ratios, wspace=0.08)
    norm = Normalize(*DROP_RANGE)
    column = 0
    image = None
    fontsize = 8 if n_heads <= 8 else 6
    for g in grids:
        axes_heads = fig.add_subplot(grid_spec[0, column])
        axes_mlp = fig.add_subplot(grid_spec[0, column + 1])
        column += 3
        layers = g.heads.shape[0]
        for axes, values in ((axes_heads, g.heads), (axes_mlp, g.mlps[:, None])):
            padded = np.full((n_layers, values.shape[1]), np.nan)
            padded[:layers] = values
            image = axes.imshow(
                np.ma.masked_invalid(padded), cmap=DROP_CMAP, norm=norm, aspect="equal",
                origin="upper",
            )
            axes.set_facecolor("#f2f2f2")  # layers the smaller model does not have
            axes.set_yticks(range(n_layers))
            axes.tick_params(length=0, labelsize=fontsize + 1)
            if annotate:
                for (row, col), value in np.ndenumerate(padded):
                    if math.isfinite(value):
                        text = f"{value:.0f}"
                        axes.text(col, row, "0" if text == "-0" else text, ha="center", va="center",
                                  fontsize=fontsize, color=_text_colour(value))
            for side in axes.spines.values():
                side.set_visible(False)
        axes_heads.set_xticks(range(g.heads.shape[1]))
        axes_heads.set_xlabel("head", fontsize=fontsize + 1)
        axes_heads.set_ylabel("layer", fontsize=fontsize + 1)
        axes_heads.set_title(shown(g.label), fontsize=fontsize + 2, loc="left")
        axes_mlp.set_xticks([0])
        axes_mlp.set_xticklabels(["MLP"])
        axes_mlp.set_yticklabels([])
    colorbar_axes = fig.add_subplot(grid_spec[0, -1])
    bar = fig.colorbar(image, cax=colorbar_axes, extend="both")
    bar.set_label("drop (points of the clean metric)", fontsize=fontsize + 1)
    bar.ax.tick_params(labelsize=fontsize + 1)
    return png_base64(fig)


@dataclass(frozen=True)
class Link:
    """One teacher component's match, as the correspondence figure draws it."""

    teacher: str
    student: str
    similarity: float
    teacher_share: float
    discarded: bool


@literal_text
def correspondence(
    teacher_names: Sequence[str],
    student_names: Sequence[str],
    links: Sequence[Link],
    fan_in: dict[str, int],
    dead: set[str],
    *,
    teacher_label: str,
    student_label: str,
) -> str:
    """Teacher components (left) joined to their matched student components (right).

    A student component that absorbed several teacher components is drawn larger, coloured and
    labelled with its fan-in; a match onto a dead (no-influence) student component ends in a
    cross; a discarded teacher mechanism's line is dashed vermillion.
    """
    rows = max(len(teacher_names), len(student_names))
    fontsize = 8 if rows <= 40 else 6 if rows <= 90 else 4
    height = max(3.0, 0.2 * rows + 1.0) if rows <= 90 else 0.09 * rows + 1.0
    fig = _figure(8.0, height)
    axes = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    axes.set_axis_off()

    def spread(names: Sequence[str]) -> dict[str, float]:
        if len(names) == 1:
            return {names[0]: 0.5}
        return {n: 1.0 - i / (len(names) - 1) for i, n in enumerate(names)}

    y_teacher, y_student = spread(teacher_names), spread(student_names)
    x_teacher, x_student = 0.22, 0.78
    most_share = max((link.teacher_share for link in links), default=0.0) or 1.0
    for link in sorted(links, key=lambda item: item.teacher_share):
        if link.teacher not in y_teacher or link.student not in y_student:
            continue
        width = 0.6 + 3.4 * link.teacher_share / most_share
        if link.discarded:
            colour, style = OKABE_ITO["vermillion"], "--"
        elif link.student in dead:  # the teacher's work went nowhere measurable
            colour, style = OKABE_ITO["grey"], ":"
        else:
            colour, style = OKABE_ITO["blue"], "-"
        axes.plot(
            [x_teacher, x_student], [y_teacher[link.teacher], y_student[link.student]],
            color=colour, linewidth=width, alpha=0.45 + 0.5 * max(0.0, link.similarity),
            linestyle=style, solid_capstyle="round", zorder=1,
        )
    discarded = {link.teacher for link in links if link.discarded}
    for name, y in y_teacher.items():
        axes.scatter([x_teacher], [y], s=22, zorder=2,
                     color=OKABE_ITO["vermillion"] if name in discarded else OKABE_ITO["grey"])
        axes.text(x_teacher - 0.02, y, shown(name) + (" (discarded)" if name in discarded else ""),
                  ha="right", va="center", fontsize=fontsize,
                  color=OKABE_ITO["vermillion"] if name in discarded else "black")
    for name, y in y_student.items():
        count = fan_in.get(name, 0)
        if name in dead:
            # a dead component cannot be doing several teacher components' work: it is drawn
            # hollow with a cross, so live compression is what stands out
            axes.scatter([x_student], [y], s=40, facecolor="white", edgecolor=OKABE_ITO["grey"],
                         zorder=2)
            if count:
                axes.scatter([x_student], [y], s=40, marker="x", color="black", zorder=3,
                             linewidths=1.4)
            label = f"{name}  dead (no influence)" + (f", {count} matched" if count else "")
            axes.text(x_student + 0.025, y, shown(label), ha="left", va="center", fontsize=fontsize,
                      color="#555555")
            continue
        colour = (OKABE_ITO["vermillion"] if count >= 3 else OKABE_ITO["orange"] if count == 2
                  else OKABE_ITO["blue"] if count == 1 else OKABE_ITO["grey"])
        axes.scatter([x_student], [y], s=26 + 70 * max(0, count - 1), color=colour, zorder=2,
                     edgecolor="black" if count >= 2 else "none")
        label = name + (f"  \u00d7{count}: absorbed {count} teacher components"
                        if count >= 2 else "")
        axes.text(x_student + 0.03, y, shown(label), ha="left", va="center", fontsize=fontsize,
                  fontweight="bold" if count >= 2 else "normal",
                  color=OKABE_ITO["vermillion"] if count >= 3 else "black")
    axes.text(x_teacher, 1.06, shown(teacher_label), ha="center", va="bottom",
              fontsize=fontsize + 2, fontweight="bold")
    axes.text(x_student, 1.06, shown(student_label), ha="center", va="bottom",
              fontsize=fontsize + 2, fontweight="bold")
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.04, 1.1)
    return png_base64(fig)


@literal_text
def drop_distributions(
    models: Sequence[tuple[str, Sequence[str], np.ndarray]], tolerance: float, *,
    label_top: int = 3, scale: float = 1.0,
) -> str:
    """Each model's clamped drops m_i as one row of dots, with the severity tolerance marked.

    Dots right of the tolerance are the components severity counts; the largest few are named.
    """
    palette = [OKABE_ITO["blue"], OKABE_ITO["orange"], OKABE_ITO["green"], OKABE_ITO["purple"]]
    fig = _figure(7.2 * scale, (0.9 + 0.75 * len(models)) * scale)
    axes = fig.add_subplot(1, 1, 1)
    axes.axvspan(tolerance, 100.0, color=OKABE_ITO["vermillion"], alpha=0.08, zorder=0)
    axes.axvline(tolerance, color=OKABE_ITO["vermillion"], linewidth=1.5, zorder=1)
    axes.text(tolerance + 1, len(models) - 0.45, f"severity tolerance T = {tolerance:g}",
              color=OKABE_ITO["vermillion"], fontsize=8, va="bottom")
    rng = np.random.default_rng(0)  # jitter only: fixed so the picture is reproducible
    for row, (label, names, drops) in enumerate(models):
        y = len(models) - 1 - row
        jitter = rng.uniform(-0.18, 0.18, size=len(drops))
        colour = palette[row % len(palette)]
        axes.scatter(drops, y + jitter, s=26, color=colour, alpha=0.85, edgecolor="white",
                     linewidths=0.5, zorder=2, label=shown(label))
        for index in np.argsort(-drops, kind="stable")[:label_top]:
            if drops[index] > tolerance:
                axes.annotate(shown(names[index]), (drops[index], y + jitter[index]),
                              xytext=(3, 5), textcoords="offset points", fontsize=7)
    axes.set_yticks(range(len(models)))
    axes.set_yticklabels([shown(m[0]) for m in reversed(models)], fontsize=8)
    axes.set_xlim(-3, 103)
    axes.set_ylim(-0.6, len(models) - 0.1)
    axes.set_xlabel("drop m_i = 100 - clamp(retained, 0, 100)  (points)", fontsize=8)
    axes.tick_params(labelsize=8)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return png_base64(fig)
