"""``diff`` of two students of different depth compares each layer with the one that stands for
the same teacher layer (through each file's matching, or the user's ``--layer-map``), never with
the layer of the same number; removed layers are listed once each."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from synthetic import copy_pair, depth_pruned_pair, model_report, teacher_drops

from pytest_circuits.cli import (
    EXIT_REGRESSION,
    EXIT_USAGE,
    REPORTS_FORMAT,
    build_parser,
    diff_reports,
    main,
)
from pytest_circuits.output import plain

DROPPED = (4, 9, 14, 19, 24, 29)
MAP = "0-3:0-3,4-7:5-8,8-11:10-13,12-15:15-18,16-19:20-23,20-23:25-28"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def write(path: Path, *reports: Any) -> str:
    path.write_text(json.dumps({"format": REPORTS_FORMAT, "version": 1,
                                "reports": [plain(r.to_dict()) for r in reports]}))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("depth")
    pruned, _ = depth_pruned_pair(DROPPED)
    copy = copy_pair()
    return {
        "copy": write(folder / "copy.json", copy),
        "pruned": write(folder / "pruned.json", pruned),
        # one model's release before and after its layers were dropped
        "copy-model": write(folder / "copy-model.json",
                            model_report("release", teacher_drops())),
        "pruned-model": write(folder / "pruned-model.json", model_report(
            "release", teacher_drops()[[i for i in range(30) if i not in DROPPED]])),
    }


def removed_layers(out: str) -> list[int]:
    return [int(n) for n in re.findall(r"student layer (\d+) \(10 components", out)]


def test_a_depth_pruned_release_is_compared_through_the_teachers_layers(
        files: dict[str, str]) -> None:
    code, out, _ = run("diff", files["copy"], files["pruned"])
    assert code == EXIT_REGRESSION  # the pruned copy does lose alignment
    assert "layers lined up as teacher layers, through each file's matching" in out
    assert "new 0-3:0-3, 4-7:5-8, 8-11:10-13, 12-15:15-18, 16-19:20-23, 20-23:25-28" in out
    # the six dropped layers, once each, named by the teacher layer that has no counterpart
    assert removed_layers(out) == list(DROPPED)
    for layer in DROPPED:
        assert f"removed: teacher layer {layer} has no counterpart in the new student" in out
    # the teacher's L23H3 is the new student's L19H3: compared with each other
    assert re.search(r"student L23H3 -> L19H3 drop\s+60\.\d+\s+67\.\d+", out)
    # never a component with the one of the same number (old L19H3 is teacher L19H3)
    assert "student L19H3 drop" not in out and "student L16H0" not in out
    # a removed layer's teacher matches are one line, not one per component
    assert "teacher L4H0 match" not in out
    assert "teachers matched into old student layer 4 (10)" in out


def test_the_users_layer_map_lines_the_layers_up_the_same_way(files: dict[str, str]) -> None:
    code, out, _ = run("diff", files["copy"], files["pruned"], "--layer-map", MAP)
    assert code == EXIT_REGRESSION
    assert f"layers lined up by --layer-map (new:old): {MAP.replace(',', ', ')}" in out
    assert removed_layers(out) == list(DROPPED)
    assert re.search(r"student L23H3 -> L19H3 drop", out)


def test_single_model_results_of_different_depth_need_a_layer_map(
        files: dict[str, str]) -> None:
    code, out, _ = run("diff", files["copy-model"], files["pruned-model"])
    assert "depths differ (30 and 24 layers) and the files hold no matching to align them: " \
           "components are not compared; give --layer-map NEW:OLD" in out
    assert "component changes" not in out and code in (0, 1)
    code, out, _ = run("diff", files["copy-model"], files["pruned-model"], "--layer-map", MAP)
    assert removed_layers(out) == list(DROPPED)


def test_a_release_diffed_with_itself_lines_nothing_up_and_finds_nothing(
        files: dict[str, str]) -> None:
    code, out, _ = run("diff", files["pruned"], files["pruned"])
    assert code == 0 and "layers lined up" not in out
    assert "0 regression(s)" in out and "no component gained or lost influence" in out


@pytest.mark.parametrize(("layer_map", "problem"), [
    ("0:0,1:1", "leaves out new student layer(s) 2-23; name each of its 24 layers"),
    (MAP + ",24:29", "names new student layer(s) 24, but the new student has 24 layers"),
    (MAP.replace("20-23:25-28", "20-23:27-30"),
     "points at old student layer(s) 30, but the old student has 30 layers"),
    ("1:0,0:1," + ",".join(f"{i}:{i}" for i in range(2, 24)),
     "not increasing: new student layer 0 -> 1 but 1 -> 0"),
])
def test_a_layer_map_that_does_not_fit_is_a_usage_error(
        files: dict[str, str], layer_map: str, problem: str) -> None:
    code, out, err = run("diff", files["copy"], files["pruned"], "--layer-map", layer_map)
    assert code == EXIT_USAGE and out == ""
    assert err.startswith("pytest-circuits: error: --layer-map ") and problem in err, err


@pytest.mark.parametrize(("layer_map", "problem"), [
    ("0:0,1", "entry '1' is not FROM:TO"),
    ("0-3:0-2", "entry '0-3:0-2' maps 4 layer(s) onto 3"),
    ("a:b", "entry 'a:b' is not FROM:TO"),
    ("0:0,0:1", "names layer 0 twice (0:0 and 0:1)"),
])
def test_a_malformed_layer_map_is_refused_by_the_parser(
        layer_map: str, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run("diff", "a.json", "b.json", "--layer-map", layer_map)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "argument --layer-map: layer map " in err and problem in err


def test_diff_reports_called_directly_aligns_too() -> None:
    pruned, kept = depth_pruned_pair(DROPPED)
    args = build_parser().parse_args(["diff", "a", "b"])
    _, components = diff_reports(copy_pair(), pruned, args)
    whats = [c.what for c in components]
    assert [w for w in whats if w.startswith("student layer")] == [
        f"student layer {layer} (10 components: L{layer}H0 .. MLP{layer})" for layer in DROPPED]
    assert not any(re.match(r"student L(\d+)H\d+ drop$", w) and
                   int(re.match(r"student L(\d+)", w).group(1)) >= 4 for w in whats)
    assert kept[19] == 23  # the example: new L19 is the teacher's (and copy's) L23
