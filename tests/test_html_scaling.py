"""The HTML report at SmolLM2's size (300 components, built from numbers): figures of bounded
size, every claim as the typed result holds it, pruned components marked, negative drops
coloured, and models of different depth drawn layer against layer."""

from __future__ import annotations

import base64
import json
import re
import struct
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from synthetic import copy_pair, depth_pruned_pair, head_pruned_pair, teacher_drops

from pytest_circuits.htmlreport import figures, render_html
from pytest_circuits.htmlreport.page import _pair_grids, pair_layer_map, slug
from pytest_circuits.results import report_from_dict

DROPPED = (4, 9, 14, 19, 24, 29)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, bytes] = {}
        self.numbers: dict[str, str] = {}
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images[data["alt"]] = base64.b64decode(data["src"].split(",", 1)[1])
        if tag == "span" and data.get("class") == "num":
            self.numbers[data["data-key"]] = data["data-value"]


def parse(page: str) -> _Page:
    parsed = _Page()
    parsed.feed(page)
    return parsed


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def prefix(report: Any) -> str:
    return slug(report.task, report.teacher.model.name, "to", report.student.model.name) + ":"


@pytest.fixture(scope="module")
def copy() -> Any:
    return copy_pair()


@pytest.fixture(scope="module")
def copy_page(copy: Any) -> str:
    return render_html([copy])


def test_figures_keep_their_size_whatever_the_depth(copy_page: str) -> None:
    small = parse(render_html([copy_pair(n_layers=4, n_heads=4)])).images
    large = parse(copy_page).images
    assert len(large) == 3
    for alt in ("teacher to student correspondence, layer by layer",
                "per-head and MLP drops of teacher and student"):
        width, height = png_size(large[alt])
        # the old correspondence drew a row per component: ~14,000 px at 300 components
        assert width <= 1500 and height <= 1500, (alt, width, height)
        assert height <= 4 * png_size(small[alt])[1]


def test_ties_are_not_claimed_as_compression(copy: Any, copy_page: str) -> None:
    # three teacher heads tied on L14H5: matched there (fan_in_all), no compression (fan_in)
    assert copy.fan_in_all["L14H5"] == ["L14H1", "L14H2", "L14H5"]
    assert "L14H5" not in copy.fan_in and copy.compressed == {}
    numbers = parse(copy_page).numbers
    p = prefix(copy)
    assert numbers[p + "matched.L14H5"] == "3"
    assert numbers[p + "fan_in.L14H5"] == "0"
    assert numbers[p + "compressed.count"] == "0"
    assert "absorbed 3" not in copy_page and "\u00d73" not in copy_page
    assert "3 of its matches were ties: not compression" in copy_page


def test_the_influential_components_are_singled_out_in_a_short_table(
        copy: Any, copy_page: str) -> None:
    numbers = parse(copy_page).numbers
    p = prefix(copy)
    top = [key[len(p) + 4:-len(".teacher_influence")] for key in numbers
           if key.startswith(p + "top.") and key.endswith(".teacher_influence")]
    # the largest shares (at most 12) among components that do measurable work, largest
    # first: the eight that carry the task, none of the 292 idle ones
    assert top == ["MLP0", "L23H3", "L20H0", "MLP1", "L17H6", "L24H4", "L14H5", "L9H1"]
    assert float(numbers[p + "top.L24H4.teacher_influence"]) == 19.5  # |-19.5|


def test_a_pruned_head_is_marked_and_named_from_the_sweep(
        tmp_path: Any) -> None:
    report = head_pruned_pair()
    page = render_html([report])
    numbers = parse(page).numbers
    assert numbers[prefix(report) + "student.pruned.count"] == "2"
    assert "Pruned in the student (zero output weights)" in page
    assert "L20H0, L23H3." in page
    assert re.search(r"discarded: .*?\(L23H3 is pruned: zero output weights\)", page)
    grid = _pair_grids(report, pair_layer_map(report), "t", "s")[1]
    assert grid.pruned_heads is not None
    assert set(zip(*np.nonzero(grid.pruned_heads), strict=True)) == {(20, 0), (23, 3)}
    # a result from before the record: said so, never "none pruned"
    data = report.to_dict()
    data["student"]["sweep"].pop("pruned")
    old = render_html([report_from_dict(data)])
    assert "Pruned in the student: not recorded" in old


def test_a_pruned_cell_is_drawn_unlike_an_idle_one() -> None:
    heads = np.array([[0.0, 0.0]])
    plain = figures.heatmaps([figures.Grid("m", heads, np.array([0.0]))])
    marked = figures.heatmaps([figures.Grid("m", heads, np.array([0.0]), ("0",),
                                            np.array([[True, False]]), np.array([False]))])
    assert plain != marked


def test_negative_drops_get_their_own_colour_on_a_scale_centred_on_zero() -> None:
    import matplotlib

    norm = figures._drop_norm()
    cmap = matplotlib.colormaps[figures.DROP_CMAP]
    assert norm(0.0) == pytest.approx(0.5)
    helps, idle, costs = (np.array(cmap(norm(v))[:3]) for v in (-19.5, 0.0, 19.5))
    assert np.abs(helps - idle).sum() > 0.3  # the old scale clamped -19.5 to the colour of 0
    assert helps[2] > helps[0] and costs[0] > costs[2]  # blue helps, red costs


def test_a_depth_pruned_student_is_drawn_layer_against_layer() -> None:
    report, kept = depth_pruned_pair(DROPPED)
    mapping = pair_layer_map(report)
    assert mapping == dict(enumerate(kept))
    teacher_grid, student_grid = _pair_grids(report, mapping, "t", "s")
    assert teacher_grid.row_labels == tuple(str(i) for i in range(30))
    assert [int(x) if x else None for x in student_grid.row_labels] == [
        None if layer in DROPPED else kept.index(layer) for layer in range(30)]
    # the student's L19H3 is drawn on the row of the teacher's L23H3
    assert student_grid.heads[23, 3] == pytest.approx(report.student.sweep.effect("L19H3").drop)
    assert np.isnan(student_grid.heads[24]).all()
    page = render_html([report])
    note = re.search(r'data-layer-map="([^"]*)"', page)
    assert note is not None
    shown = {int(k): v for k, v in json.loads(note.group(1).replace("&quot;", '"')).items()}
    assert shown == mapping
    assert "teacher layers with no student counterpart (4, 9, 14, 19, 24, 29)" in page


def test_a_layer_map_given_to_the_writer_is_used_and_checked() -> None:
    report, kept = depth_pruned_pair(DROPPED)
    given = {s: t for s, t in enumerate(kept)}
    given[23] = 29  # the user says the last student layer is the teacher's last
    page = render_html([report], layer_map=given)
    assert "rows are aligned by the layer map given" in page
    assert "23&rarr;29" in page
    with pytest.raises(ValueError, match="leaves out student layer"):
        render_html([report], layer_map={0: 0})


def test_same_depth_pairs_stay_by_index_whatever_the_matching(copy: Any) -> None:
    assert pair_layer_map(copy) == {i: i for i in range(30)}
    assert "data-layer-map" not in render_html([copy])


def test_the_correspondence_figure_is_a_matrix_of_groups() -> None:
    drops = teacher_drops(3, 2)
    assert drops.shape == (3, 3)
    links = [figures.Link("a", "x", 0.9, 0.6, False), figures.Link("b", "x", 0.8, 0.4, True)]
    image = figures.correspondence(["a", "b"], ["x"], links, {"x": 2}, set(),
                                   teacher_label="t", student_label="s", marked=["a", "b"])
    assert png_size(base64.b64decode(image))[0] < 1200
