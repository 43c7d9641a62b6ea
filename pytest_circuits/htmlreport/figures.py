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
from collections.abc import Callable, Collection, Sequence
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
#: Diverging map of the drop heatmaps, centred on 0: red where ablating a component costs the
#: task, blue where it helps (a negative drop), near white where it does nothing. ColorBrewer's
#: RdBu is safe for the common colour-vision deficiencies.
DROP_CMAP = "RdBu_r"
#: Heatmap colours span -50..100 points with 0 at the centre: one colour means the same drop in
#: every model and section, a component that helps when ablated (teacher L24H4 at -19.5) is
#: visibly blue, not the colour of an idle one. Cells outside the range keep their true number.
DROP_RANGE = (-50.0, 100.0)
#: Pruned components (zero output weights) are hatched grey: they cost nothing when ablated, as
#: idle ones do, but were removed rather than left idle.
PRUNED_FACE, PRUNED_HATCH = "#cfcfcf", "////"


@dataclass(frozen=True)
class Grid:
    """One model's drops laid out as the heatmap draws them (NaN: no layer or not swept).

    ``row_labels`` name each row's layer ("" where this model has no layer on the row: a
    dropped layer of a depth-pruned student); ``pruned_heads``/``pruned_mlps`` mark the pruned
    components (zero output weights).
    """

    label: str
    heads: np.ndarray  # [rows, heads]
    mlps: np.ndarray  # [rows]
    row_labels: tuple[str, ...] = ()
    pruned_heads: np.ndarray | None = None  # [rows, heads] bool
    pruned_mlps: np.ndarray | None = None  # [rows] bool

    def labels(self) -> list[str]:
        return list(self.row_labels) or [str(i) for i in range(self.heads.shape[0])]


def drop_grid(label: str, effects: Sequence[Any], n_layers: int, n_heads: int, *,
              rows: Sequence[int | None] | None = None, pruned: Sequence[str] = ()) -> Grid:
    """Place each swept component's unclamped drop at its layer's row (and head): ``rows`` gives
    the layer shown on each row (None: an empty row), default every layer in order."""
    order = list(range(n_layers)) if rows is None else list(rows)
    row_of = {layer: i for i, layer in enumerate(order) if layer is not None}
    heads = np.full((len(order), n_heads), np.nan)
    mlps = np.full(len(order), np.nan)
    pruned_heads = np.zeros((len(order), n_heads), dtype=bool)
    pruned_mlps = np.zeros(len(order), dtype=bool)
    gone = set(pruned)
    for effect in effects:
        row = row_of.get(effect.layer)
        if row is None:
            continue
        if effect.head is None:
            mlps[row] = effect.drop
            pruned_mlps[row] = effect.name in gone
        elif effect.head < n_heads:
            heads[row, effect.head] = effect.drop
            pruned_heads[row, effect.head] = effect.name in gone
    labels = tuple("" if layer is None else str(layer) for layer in order)
    return Grid(label, heads, mlps, labels, pruned_heads, pruned_mlps)


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


def _drop_norm() -> Any:
    from matplotlib.colors import TwoSlopeNorm

    low, high = DROP_RANGE
    return TwoSlopeNorm(vmin=low, vcenter=0.0, vmax=high)


def _text_colour(value: float) -> str:
    """White on the strong ends of the diverging map, black near its pale centre."""
    low, high = DROP_RANGE
    share = value / high if value >= 0 else value / low
    return "white" if share > 0.6 else "black"


@literal_text
def heatmaps(grids: Sequence[Grid], *, annotate: bool | None = None, scale: float = 1.0) -> str:
    """Per-head drops (layers x heads) of each model with their MLP drops beside them, side by
    side on one diverging colour scale centred on 0, as a base64 PNG. Rows are the grids' rows
    (a student's layer on the row of the teacher layer it stands for); pruned components are
    hatched. The figure's height is bounded: a deep model gets smaller cells."""
    from matplotlib.patches import Rectangle

    n_rows = max(g.heads.shape[0] for g in grids)
    n_heads = max(g.heads.shape[1] for g in grids)
    if annotate is None:  # numbers stay legible up to GPT-2 small's 12 heads
        annotate = n_heads <= 16 and n_rows <= 16
    columns = sum(g.heads.shape[1] + 1.6 for g in grids)
    cell = min(0.55 if n_heads <= 16 else 0.22, 9.0 / max(n_rows, 1), 12.0 / columns)
    width = columns * cell + 1.4
    height = n_rows * cell + 1.3
    fig = _figure(width * scale, height * scale)
    ratios: list[float] = []
    for i, g in enumerate(grids):
        ratios += [g.heads.shape[1], 1.0]
        if i < len(grids) - 1:
            ratios.append(0.6)  # a gap between models
    ratios.append(0.35)
    grid_spec = fig.add_gridspec(1, len(ratios), width_ratios=ratios, wspace=0.08)
    norm = _drop_norm()
    column = 0
    image = None
    fontsize = 8 if n_heads <= 8 and n_rows <= 16 else 6
    any_pruned = False
    step = max(1, math.ceil(n_rows / 40))  # tick labels stay readable on a deep model
    for g in grids:
        axes_heads = fig.add_subplot(grid_spec[0, column])
        axes_mlp = fig.add_subplot(grid_spec[0, column + 1])
        column += 3
        rows = g.heads.shape[0]
        marks = (g.pruned_heads, g.pruned_mlps[:, None] if g.pruned_mlps is not None else None)
        for axes, values, pruned in ((axes_heads, g.heads, marks[0]),
                                     (axes_mlp, g.mlps[:, None], marks[1])):
            padded = np.full((n_rows, values.shape[1]), np.nan)
            padded[:rows] = values
            image = axes.imshow(
                np.ma.masked_invalid(padded), cmap=DROP_CMAP, norm=norm, aspect="equal",
                origin="upper", interpolation="nearest",
            )
            axes.set_facecolor("#f2f2f2")  # rows where this model has no layer
            if pruned is not None:
                for row, col in zip(*np.nonzero(pruned), strict=True):
                    any_pruned = True
                    axes.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1,
                                             facecolor=PRUNED_FACE, hatch=PRUNED_HATCH,
                                             edgecolor="#555555", linewidth=0.0))
            axes.set_yticks(range(0, n_rows, step))
            axes.tick_params(length=0, labelsize=fontsize + 1)
            if annotate:
                for (row, col), value in np.ndenumerate(padded):
                    if math.isfinite(value):
                        text = f"{value:.0f}"
                        axes.text(col, row, "0" if text == "-0" else text, ha="center",
                                  va="center", fontsize=fontsize, color=_text_colour(value))
            for side in axes.spines.values():
                side.set_visible(False)
        labels = g.labels() + [""] * (n_rows - rows)
        axes_heads.set_yticklabels([labels[i] for i in range(0, n_rows, step)])
        axes_heads.set_xticks(range(g.heads.shape[1]))
        axes_heads.set_xlabel("head", fontsize=fontsize + 1)
        axes_heads.set_ylabel("layer", fontsize=fontsize + 1)
        axes_heads.set_title(shown(g.label), fontsize=fontsize + 2, loc="left")
        axes_mlp.set_xticks([0])
        axes_mlp.set_xticklabels(["MLP"])
        axes_mlp.set_yticklabels([])
    colorbar_axes = fig.add_subplot(grid_spec[0, -1])
    bar = fig.colorbar(image, cax=colorbar_axes, extend="both")
    bar.set_ticks([DROP_RANGE[0], -25, 0, 25, 50, 75, DROP_RANGE[1]])
    bar.set_label("drop (points; < 0: ablating helps)", fontsize=fontsize + 1)
    bar.ax.tick_params(labelsize=fontsize + 1)
    if any_pruned:
        fig.text(0.01, -0.01, "hatched grey: pruned (zero output weights), not idle",
                 fontsize=fontsize + 1, color="#333333", va="top")
    return png_base64(fig)


@dataclass(frozen=True)
class Link:
    """One teacher component's match, as the correspondence figure draws it."""

    teacher: str
    student: str
    similarity: float
    teacher_share: float
    discarded: bool


#: How a singled-out teacher component's mark is coloured, by what became of it (first that
#: applies), and the legend's words for it.
MARK_STYLES = (
    ("discarded", OKABE_ITO["vermillion"], "discarded"),
    ("pruned", OKABE_ITO["black"], "onto a pruned component"),
    ("dead", OKABE_ITO["grey"], "onto a dead component"),
    ("compressed", OKABE_ITO["orange"], "compressed (fan-in >= 2)"),
    ("kept", OKABE_ITO["blue"], "kept"),
)


def mark_status(link: Link, fan_in: dict[str, int], dead: Collection[str],
                pruned: Collection[str] = ()) -> str:
    """What became of a teacher component, as its mark is coloured (see :data:`MARK_STYLES`)."""
    if link.discarded:
        return "discarded"
    if link.student in pruned:
        return "pruned"
    if link.student in dead:
        return "dead"
    if fan_in.get(link.student, 0) >= 2:
        return "compressed"
    return "kept"


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
    teacher_groups: dict[str, str] | None = None,
    student_groups: dict[str, str] | None = None,
    marked: Sequence[str] = (),
    pruned: Collection[str] = (),
    aligned: Sequence[tuple[str, str]] = (),
) -> str:
    """Where the teacher's influence went, as a matrix of groups: teacher groups (rows; a
    model's layers, given ``teacher_groups``: name -> group, else each component on its own)
    by student groups (columns), each cell the teacher's share of influence matched from the
    row into the column. Its size depends on the number of groups, never on the number of
    components.

    The teacher components in ``marked`` (the influential ones) are numbered in their cell,
    coloured by what became of them (:func:`mark_status`: discarded, onto a pruned or dead
    student component, compressed per ``fan_in``, kept). ``aligned`` (row, column) cells are
    outlined: the layer each student layer stands for.
    """
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    t_group = teacher_groups or {n: n for n in teacher_names}
    s_group = student_groups or {n: n for n in student_names}
    rows = list(dict.fromkeys(t_group.get(n, n) for n in teacher_names))
    columns = list(dict.fromkeys(s_group.get(n, n) for n in student_names))
    row_of = {g: i for i, g in enumerate(rows)}
    column_of = {g: i for i, g in enumerate(columns)}
    matrix = np.zeros((max(len(rows), 1), max(len(columns), 1)))
    place: dict[str, tuple[int, int]] = {}
    for link in links:
        row = row_of.get(t_group.get(link.teacher, link.teacher))
        column = column_of.get(s_group.get(link.student, link.student))
        if row is None or column is None:
            continue
        matrix[row, column] += max(float(link.teacher_share), 0.0)
        place[link.teacher] = (row, column)
    span = max(len(rows), len(columns), 1)
    cell = min(0.42, 7.5 / span)
    fontsize = 8 if span <= 16 else 6
    fig = _figure(max(4.2, len(columns) * cell + 2.4), max(3.0, len(rows) * cell + 1.9))
    axes = fig.add_axes((0.16, 0.16, 0.72, 0.72))
    shares = 100.0 * matrix
    image = axes.imshow(np.ma.masked_where(shares <= 0, shares), cmap="Blues",
                        norm=Normalize(0.0, max(float(shares.max()), 1e-9)), aspect="equal",
                        origin="upper", interpolation="nearest")
    axes.set_facecolor("white")
    step_r, step_c = max(1, math.ceil(len(rows) / 40)), max(1, math.ceil(len(columns) / 40))
    axes.set_yticks(range(0, len(rows), step_r))
    axes.set_yticklabels([shown(r) for r in rows[::step_r]], fontsize=fontsize)
    axes.set_xticks(range(0, len(columns), step_c))
    axes.set_xticklabels([shown(c) for c in columns[::step_c]], fontsize=fontsize,
                         rotation=90)
    axes.set_ylabel(shown(teacher_label), fontsize=fontsize + 1)
    axes.set_xlabel(shown(student_label), fontsize=fontsize + 1)
    axes.tick_params(length=0)
    for row_name, column_name in aligned:
        if row_name in row_of and column_name in column_of:
            axes.add_patch(Rectangle((column_of[column_name] - 0.5, row_of[row_name] - 0.5), 1,
                                     1, fill=False, edgecolor="#333333", linewidth=0.6))
    if span <= 16:  # each cell's share in its corner, clear of the numbered marks
        darkest = float(shares.max()) or 1.0
        for (row, column), value in np.ndenumerate(shares):
            if value >= 0.5:
                axes.text(column - 0.44, row - 0.42, f"{value:.0f}%", ha="left", va="top",
                          fontsize=fontsize - 1,
                          color="white" if value > 0.55 * darkest else "#333333")
    by_teacher = {link.teacher: link for link in links}
    colours = {status: colour for status, colour, _ in MARK_STYLES}
    crowd: dict[tuple[int, int], int] = {}
    used: set[str] = set()
    for number, name in enumerate(marked, start=1):
        link = by_teacher.get(name)
        if link is None or name not in place:
            continue
        row, column = place[name]
        k = crowd.get((row, column), 0)
        crowd[(row, column)] = k + 1
        # a few marks share a cell on a ring around its centre (lowered a little on a small
        # matrix, where the cell's share is printed in its corner)
        centre = 0.08 if span <= 16 else 0.0
        dx, dy = (centre, centre) if k == 0 else (
            centre + 0.3 * math.cos(k * 2.1), centre + 0.3 * math.sin(k * 2.1))
        status = mark_status(link, fan_in, dead, pruned)
        used.add(status)
        axes.scatter([column + dx], [row + dy], s=(110 if span <= 16 else 70),
                     color=colours[status], edgecolor="white", linewidths=0.8, zorder=3)
        axes.text(column + dx, row + dy, str(number), ha="center", va="center",
                  fontsize=fontsize - 1, color="white", fontweight="bold", zorder=4)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour, label=words)
               for status, colour, words in MARK_STYLES if status in used]
    if handles:  # above the matrix, clear of the colour bar whatever the figure's size
        axes.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.01),
                    ncol=len(handles), fontsize=fontsize, frameon=False, handletextpad=0.2,
                    columnspacing=0.9, title="numbered: the teacher's influential components",
                    title_fontsize=fontsize, alignment="left")
    bar = fig.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    bar.set_label("teacher influence matched (% of total)", fontsize=fontsize)
    bar.ax.tick_params(labelsize=fontsize)
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
