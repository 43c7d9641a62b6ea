"""The self-contained HTML page: one section per pair (or model) and task, built from typed results.

Every number shown is wrapped as ``<span class="num" data-key=... data-value=...>`` holding the
exact value of the typed result, so a test (or a reader's script) can check the page against
the JSON without trusting the rounding of the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..analysis.layers import aligned_rows, depth, layer_map_problem, report_layer_map, spans
from ..identity import model_name
from ..output import plain
from . import figures
from .circuits import circuits_section, circuits_summary, is_circuits_report, section_id
from .markup import esc, fmt, num, slug
from .markup import part as _part
from .markup import table as _table

#: The parts every pair section has, in order (``data-part`` attributes; tests check them).
PAIR_PARTS = (
    "overview", "heatmaps", "correspondence", "distributions", "alignment", "brittleness",
    "gates", "discarded", "fingerprint",
)
#: The parts of a single-model section (a model gated on its own, without its teacher).
MODEL_PARTS = ("overview", "heatmaps", "distributions", "brittleness", "gates", "fingerprint")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1a1a1a;
background:#fafafa;line-height:1.4}
header{background:#0b3d5c;color:white;padding:14px 28px}
header h1{margin:0;font-size:1.4em}header p{margin:4px 0 0;opacity:.85;font-size:.9em}
main{padding:8px 28px 40px;max-width:1500px}
section.report{background:white;border:1px solid #ddd;border-radius:6px;margin:20px 0;
padding:6px 20px 16px}
section.report>h2{margin:10px 0 4px;font-size:1.25em}
.part{margin:14px 0}.part h3{font-size:1.02em;margin:6px 0;color:#0b3d5c}
.grid2{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
table{border-collapse:collapse;font-size:.86em;margin:4px 0}
th,td{border-bottom:1px solid #e4e4e4;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:.85em}
.PASS{background:#cfe9df;color:#00583f}.FAIL{background:#f6d5c4;color:#8a3300}
.XFAIL{background:#e6e1ef;color:#4b3a6b}
.big{font-size:1.6em;font-weight:700}.facts{display:flex;gap:26px;flex-wrap:wrap}
.fact{min-width:120px}.fact .label{font-size:.78em;color:#555;text-transform:uppercase}
.note{color:#555;font-size:.85em;max-width:900px}
.warn{color:#8a3300;font-weight:600}
img{max-width:100%;height:auto}
nav table td a{color:#0b3d5c}
"""


# ----------------------------------------------------------------------------- small helpers


def _model_field(model: Any, key: str, default: Any = None) -> Any:
    if isinstance(model, dict):
        return model.get(key, default)
    return getattr(model, key, default)


def is_pair_report(report: Any) -> bool:
    return hasattr(report, "alignment") and hasattr(report, "student")












def _img(data: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'




# ----------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class Gate:
    """A gate result with the verdict to show (a GateRecord's, which knows about xfail)."""

    result: Any
    verdict: str


def as_gates(gate_results: Iterable[Any]) -> list[Gate]:
    """GateResults or GateRecords (the plugin's, with the test outcome) as :class:`Gate`."""
    gates = []
    for item in gate_results:
        if hasattr(item, "result") and hasattr(item, "verdict"):
            gates.append(Gate(item.result, item.verdict))
        else:
            gates.append(Gate(item, "PASS" if item.passed else "FAIL"))
    return gates


def gates_for(gates: Sequence[Gate], teacher: str | None, subject: str, task: str) -> list[Gate]:
    """The gates that checked this pair (or model) on this task."""
    chosen = []
    for gate in gates:
        result = gate.result
        if result.task != task:
            continue
        base = result.subject.split(" [")[0]
        if teacher is not None and base == f"{teacher} -> {subject}":
            chosen.append(gate)
        elif base == subject:
            gate_teacher = result.models.get("teacher") if result.models else None
            if teacher is None or gate_teacher is None or model_name(gate_teacher) == teacher:
                chosen.append(gate)
    return chosen


def _gates_table(gates: Sequence[Gate], prefix: str) -> str:
    if not gates:
        return '<p class="note">No gate checked this pair and task in this run.</p>'
    rows = []
    for i, gate in enumerate(gates):
        result = gate.result
        checks = result.checks or []
        where = esc(result.nodeid or result.gate)
        for check in checks:
            rows.append([
                where, esc(result.gate), esc(result.subject), esc(check.metric),
                num(f"{prefix}gate.{i}.{check.metric}.value", check.value, 4),
                f"{esc(check.op)} " + num(f"{prefix}gate.{i}.{check.metric}.threshold",
                                          check.threshold, 4),
                num(f"{prefix}gate.{i}.{check.metric}.teacher", check.teacher_value, 4),
                f'<span class="badge {"PASS" if check.passed else gate.verdict}">'
                f'{"PASS" if check.passed else gate.verdict}</span>',
            ])
    return _table(["test", "gate", "subject", "metric", "value", "threshold", "teacher",
                   "verdict"], rows, numeric=(4, 5, 6))


# ----------------------------------------------------------------------------- sections


def _shape(report: Any) -> tuple[int, int]:
    model = report.model
    effects = report.sweep.effects
    n_layers = _model_field(model, "n_layers") or 1 + max(e.layer for e in effects)
    n_heads = _model_field(model, "n_heads") or 1 + max(
        (e.head for e in effects if e.head is not None), default=0)
    return int(n_layers), int(n_heads)


def pruned_of(report: Any) -> tuple[str, ...]:
    """The model's pruned components as its sweep recorded them (none when not recorded)."""
    return tuple(getattr(report.sweep, "pruned", None) or ())


def _grid(report: Any, label: str, rows: Sequence[int | None] | None = None) -> figures.Grid:
    n_layers, n_heads = _shape(report)
    return figures.drop_grid(label, report.sweep.effects, n_layers, n_heads, rows=rows,
                             pruned=pruned_of(report))


def pair_layer_map(report: Any, layer_map: Mapping[int, int] | None = None) -> dict[int, int]:
    """Student layer -> teacher layer under which a pair is drawn: by index for the same depth,
    ``layer_map`` (checked against the pair) or the alignment through the matching otherwise
    (:func:`analysis.layers.report_layer_map`)."""

    n_teacher, n_student = depth(report.teacher), depth(report.student)
    if layer_map is None or n_teacher == n_student:
        return report_layer_map(report)
    problem = layer_map_problem(layer_map, n_student, n_teacher)
    if problem:
        raise ValueError(f"layer_map for {model_name(report.teacher.model)} -> "
                         f"{model_name(report.student.model)}: {problem}")
    return report_layer_map(report, layer_map)


def _pair_grids(report: Any, mapping: dict[int, int], teacher: str, student: str
                ) -> list[figures.Grid]:
    """Teacher and student heatmaps with each student layer on the row of its teacher layer."""

    n_teacher, n_student = _shape(report.teacher)[0], _shape(report.student)[0]
    rows = aligned_rows(mapping, n_teacher, n_student)
    return [_grid(report.teacher, f"teacher {teacher}", [t for t, _ in rows]),
            _grid(report.student, f"student {student}", [s for _, s in rows])]


def _brittleness_rows(reports: Sequence[tuple[str, Any]], delta: Any, prefix: str
                      ) -> tuple[list[str], list[list[str]]]:
    headers = ["metric"] + [role for role, _ in reports]
    if delta is not None:
        headers += ["student - teacher", "per unit of compression"]
    specs = [
        ("mean drop (points)", "mean_drop", 3),
        ("severity", "severity", 3),
        ("worst single drop (points)", "worst_drop", 3),
        ("components above tolerance", "count_above_tolerance", 3),
        ("worst-5% mean (points)", "worst5_mean", 3),
        ("Gini of drops", "gini", 3),
    ]
    rows = []
    for label, attr, digits in specs:
        row = [esc(label)]
        for role, report in reports:
            b = report.brittleness
            cell = num(f"{prefix}{role}.{attr}", getattr(b, attr), digits)
            if attr == "mean_drop":
                low, high = b.mean_drop_ci
                cell += (" <small>[" + num(f"{prefix}{role}.mean_drop_ci.low", low, digits)
                         + " .. " + num(f"{prefix}{role}.mean_drop_ci.high", high, digits)
                         + "]</small>")
            if attr == "worst_drop":
                cell += f" <small>({esc(b.worst_component)})</small>"
            row.append(cell)
        if delta is not None:
            row.append(num(f"{prefix}delta.{attr}", getattr(delta, attr), digits))
            row.append(num(f"{prefix}delta.{attr}_per_compression",
                           getattr(delta, f"{attr}_per_compression"), digits))
        rows.append(row)
    return headers, rows


def _fingerprint_table(fingerprint: Any, models: Sequence[tuple[str, Any]]) -> str:
    data = fingerprint.to_dict()
    versions = data.pop("versions", {}) or {}
    rows = [[esc(k), esc(v)] for k, v in data.items() if v not in ("", None)]
    rows += [[esc(f"version: {k}"), esc(v)] for k, v in sorted(versions.items())]
    for role, model in models:
        sha = str(_model_field(model, "weights_sha256", ""))
        rows.append([esc(f"{role} weights sha256"), esc(sha[:16] + ("..." if sha else ""))])
        rows.append([esc(f"{role} parameters"), esc(_model_field(model, "n_params", "-"))])
    return _table(["field", "value"], rows)


def _distribution_models(pairs: Sequence[tuple[str, Any]]) -> list[tuple[str, list[str],
                                                                          np.ndarray]]:
    return [(label, r.sweep.names, np.asarray(r.sweep.clamped_drops, dtype=float))
            for label, r in pairs]


#: How many of the teacher's most influential components the correspondence singles out.
TOP_COMPONENTS = 12


def _alignment_note(report: Any, mapping: dict[int, int], given: bool, p: str) -> str:

    n_teacher = _shape(report.teacher)[0]
    missing = sorted(set(range(n_teacher)) - set(mapping.values()))
    pairs = ", ".join(f"{s}&rarr;{t}" for s, t in sorted(mapping.items()))
    how = ("the layer map given" if given else
           "the matching: each student layer stands for the teacher layer its components are "
           "matched to most (influence-weighted, monotone)")
    return (f'<p class="note" data-layer-map="{esc(json.dumps(mapping))}">The models differ in '
            f"depth, so rows are aligned by {how}, not by index: student layer &rarr; teacher "
            f"layer {pairs}. Grey rows on the student side: teacher layers with no student "
            f"counterpart ({esc(spans(missing)) or 'none'}).</p>")


def _status(pair: Any, report: Any, dead: set[str], pruned: set[str],
            discarded: dict[str, Any]) -> str:
    """What became of a teacher component, in words, from the typed result alone."""
    if pair.teacher in discarded:
        also = (f" ({esc(pair.student)} is pruned: zero output weights)"
                if pair.student in pruned else "")
        return (f'<span class="warn">discarded: {esc(discarded[pair.teacher].reason)}{also}'
                "</span>")
    if pair.student in pruned:
        return (f'<span class="warn">matched onto {esc(pair.student)}, pruned in the student '
                "(zero output weights)</span>")
    if pair.student in dead:
        return (f'<span class="warn">matched onto {esc(pair.student)}, dead in the student '
                f"(ablating it costs &lt; {fmt(report.settings.min_student_influence)} points)"
                "</span>")
    absorbed = report.compressed.get(pair.student)
    if absorbed:
        return (f"compressed: {esc(pair.student)} absorbed {len(absorbed)} teacher components "
                f"({esc(', '.join(absorbed))})")
    if pair.ambiguous:
        return f"kept (a tie among {esc(', '.join(pair.candidates))})"
    return "kept"


def correspondence_part(report: Any, mapping: dict[int, int], teacher: str, student: str,
                        p: str) -> str:
    """Where the teacher's influence went, at layer level (a figure of bounded size whatever
    the model), the most influential teacher components singled out in a short table, and
    every claim (compression, dead and pruned matches, discards) read from the typed result."""
    t_layer = {e.name: e.layer for e in report.teacher.sweep.effects}
    s_layer = {e.name: e.layer for e in report.student.sweep.effects}
    dead = {m.student for m in report.dead_matches}
    pruned_t, pruned_s = set(pruned_of(report.teacher)), set(pruned_of(report.student))
    discarded = {d.teacher: d for d in report.discarded}
    pairs = report.alignment.pairs
    # the most influential teacher components that do measurable work (at least the dead
    # floor): an idle component's match is noise, and a reviewer reads these first
    floor = float(report.settings.min_student_influence)
    top = [m for m in sorted(pairs, key=lambda m: (-m.teacher_share, m.teacher))
           if m.teacher_share > 0 and m.teacher_influence >= floor][:TOP_COMPONENTS]
    links = [figures.Link(m.teacher, m.student, m.similarity, m.teacher_share,
                          m.teacher in discarded) for m in pairs]
    image = _img(figures.correspondence(
        report.teacher.sweep.names, report.student.sweep.names, links,
        {s: len(t) for s, t in report.compressed.items()}, dead,
        teacher_label=f"teacher {teacher} (layer)", student_label=f"student {student} (layer)",
        teacher_groups={n: f"L{layer}" for n, layer in t_layer.items()},
        student_groups={n: f"L{layer}" for n, layer in s_layer.items()},
        marked=[m.teacher for m in top], pruned=pruned_s,
        aligned=[(f"L{t}", f"L{s}") for s, t in mapping.items()],
    ), "teacher to student correspondence, layer by layer")
    body = image + ('<p class="note">Each cell: the share of the teacher\'s influence (sum of '
                    "its components' shares) whose components were matched from the teacher "
                    "layer (row) to the student layer (column); outlined cells: the layer each "
                    "student layer stands for. Numbered: the teacher's most influential "
                    "components, listed below.</p>")
    rows = []
    for number, m in enumerate(top, start=1):
        rows.append([
            str(number),
            esc(m.teacher) + (" <small>(pruned)</small>" if m.teacher in pruned_t else ""),
            num(f"{p}top.{m.teacher}.teacher_influence", m.teacher_influence),
            num(f"{p}top.{m.teacher}.teacher_share", m.teacher_share),
            esc(m.student),
            num(f"{p}top.{m.teacher}.similarity", m.similarity),
            num(f"{p}top.{m.teacher}.student_influence", m.student_influence),
            _status(m, report, dead, pruned_s, discarded),
        ])
    body += "<h4>The teacher's most influential components</h4>" + _table(
        ["#", "teacher component", "teacher influence", "share", "matched student",
         "similarity", "student influence", "what became of it"], rows, numeric=(0, 2, 3, 5, 6))
    body += _claims(report, dead, pruned_t, pruned_s, p)
    body += _fan_in_details(report, dead, pruned_s, p)
    if report.ambiguous:
        # tie-aware matching: these matches were decided by ablation effect, not similarity,
        # and are left out of fan-in; a reviewer should know which ones
        body += (f"<details><summary>Ambiguous groups (tie-aware matching): "
                 f"{len(report.ambiguous)}</summary>" + _table(
                     ["type", "teacher components", "student candidates within the tie margin"],
                     [[esc(g.kind), esc(", ".join(g.teachers)), esc(", ".join(g.students))]
                      for g in report.ambiguous],
                 ) + '<p class="note">Components whose most similar counterparts lie within the '
                 "tie margin of each other (for example heads that all attend to the first "
                 "token): their matches were decided by ablation effect and are not counted as "
                 "compression.</p></details>")
    return body


def _claims(report: Any, dead: set[str], pruned_t: set[str], pruned_s: set[str], p: str
            ) -> str:
    """Compression, dead matches and pruned components, each as the typed result says."""
    items = []
    compressed = report.compressed
    if compressed:
        listed = "; ".join(f"<b>{esc(s)}</b> &larr; {esc(', '.join(t))}"
                           for s, t in sorted(compressed.items(), key=lambda kv: -len(kv[1])))
        items.append(f"Compression (fan-in): {num(p + 'compressed.count', len(compressed))} "
                     f"live student component(s) took over two or more teacher components: "
                     f"{listed}.")
    else:
        items.append(f"Compression (fan-in): {num(p + 'compressed.count', 0)} student "
                     "components took over two or more teacher components"
                     + (" (matches that were ties are no evidence of compression and are not "
                        "counted)" if any(m.ambiguous for m in report.alignment.pairs) else "")
                     + ".")
    dead_pairs = report.dead_matches
    items.append(f"Matched onto dead student components: "
                 f"{num(p + 'dead.count', len(dead_pairs))} teacher component(s) onto "
                 f"{len(dead)} student component(s) whose ablation costs less than "
                 f"{fmt(report.settings.min_student_influence)} points.")
    for role, pruned in (("teacher", pruned_t), ("student", pruned_s)):
        recorded = getattr(getattr(report, role).sweep, "pruned", None) is not None
        if pruned:
            items.append(f"Pruned in the {role} (zero output weights): "
                         f"{num(f'{p}{role}.pruned.count', len(pruned))}: "
                         f"{esc(', '.join(sorted(pruned, key=_component_order)))}.")
        elif not recorded:
            items.append(f"Pruned in the {role}: not recorded (a result from an earlier "
                         "version).")
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _component_order(name: str) -> tuple[int, int, str]:
    found = re.match(r"^L(\d+)H(\d+)$|^MLP(\d+)$", name)
    if found is None:
        return (10**9, 0, name)
    if found.group(3) is not None:
        return (int(found.group(3)), 10**6, name)
    return (int(found.group(1)), int(found.group(2)), name)


def _fan_in_details(report: Any, dead: set[str], pruned: set[str], p: str) -> str:
    """Every matched student component, collapsed: fan-in as the report counts it (live,
    unambiguous matches) beside every match it received."""
    s_influence = dict(zip(report.student.sweep.names, report.student.sweep.influences,
                           strict=True))
    compressed = report.compressed
    ordered = sorted(report.fan_in_all.items(),
                     key=lambda kv: (kv[0] not in compressed, kv[0] in dead,
                                     _component_order(kv[0])))
    rows = []
    for name, matched in ordered:
        counted = report.fan_in.get(name, [])
        if name in pruned:
            note = f"pruned (zero output weights): {len(matched)} teacher component(s) matched"
        elif name in dead:
            note = (f"dead: {len(matched)} teacher component(s) matched here, but ablating it "
                    f"costs {fmt(s_influence.get(name, 0.0))} points (&lt; "
                    f"{fmt(report.settings.min_student_influence)})")
        elif name in compressed:
            note = f"absorbed {len(counted)} teacher components"
        elif len(matched) > len(counted):
            note = f"{len(matched) - len(counted)} of its matches were ties: not compression"
        else:
            note = ""
        rows.append([
            f"<b>{esc(name)}</b>" if name in compressed else esc(name),
            num(f"{p}matched.{name}", len(matched)), num(f"{p}fan_in.{name}", len(counted)),
            esc(", ".join(matched)), num(f"{p}student_influence.{name}", s_influence.get(name)),
            f'<span class="warn">{note}</span>' if note else "",
        ])
    return (f"<details><summary>Every matched student component "
            f"({len(rows)})</summary>" + _table(
                ["student component", "matched", "fan-in", "teacher components matched to it",
                 "student influence", "notes"], rows, numeric=(1, 2, 4))
            + '<p class="note">Fan-in counts the matches onto a live student component that were '
              "not ties: a dead component cannot be doing several teacher components' work, and "
              "a tie is no evidence of compression.</p></details>")


def pair_section(report: Any, gates: Sequence[Gate],
                 layer_map: Mapping[int, int] | None = None) -> str:
    """One pair and task: everything a reviewer needs to decide on the student. Models of
    different depth are drawn layer against layer through ``layer_map`` (student -> teacher)
    or, without one, the alignment read from the matching."""
    teacher, student = model_name(report.teacher.model), model_name(report.student.model)
    anchor = slug(report.task, teacher, "to", student)
    p = f"{anchor}:"
    tolerance = float(report.teacher.brittleness.tolerance)
    a = report.alignment
    t_perf, s_perf = report.teacher.performance, report.student.performance

    facts = [
        ("behaviour retained (%)", num(p + "behavior_retained", report.behavior_retained)),
        ("alignment A", num(p + "alignment.score", a.score)),
        ("weighted alignment", num(p + "alignment.weighted_score", a.weighted_score)),
        ("severity teacher -> student",
         num(p + "headline.teacher.severity", report.teacher.brittleness.severity) + " &rarr; "
         + num(p + "headline.student.severity", report.student.brittleness.severity)),
        ("compression C", num(p + "compression", report.compression)),
        ("discarded mechanisms", num(p + "discarded.count", len(report.discarded))),
    ]
    overview = '<div class="facts">' + "".join(
        f'<div class="fact"><div class="label">{esc(label)}</div><div class="big">{value}</div>'
        "</div>" for label, value in facts) + "</div>"
    overview += _table(
        ["model", "clean logit difference", "accuracy", "prompts"],
        [[esc(f"teacher {teacher}"), num(p + "teacher.logit_diff", t_perf.mean_logit_diff),
          num(p + "teacher.accuracy", t_perf.accuracy), str(t_perf.n_prompts)],
         [esc(f"student {student}"), num(p + "student.logit_diff", s_perf.mean_logit_diff),
          num(p + "student.accuracy", s_perf.accuracy), str(s_perf.n_prompts)]],
        numeric=(1, 2, 3),
    )

    mapping = pair_layer_map(report, layer_map)
    heat = _img(figures.heatmaps(_pair_grids(report, mapping, teacher, student)),
                "per-head and MLP drops of teacher and student")
    heat += ('<p class="note">Drop = 100 - retained, in points of each model\'s clean logit '
             "difference, for each head (grid) and MLP (column) ablated alone. Both models share "
             "one diverging colour scale centred on 0 (red: ablating costs the task, blue: it "
             "helps, from -50 to 100 points); cell numbers are unclamped (above 100: the answer "
             "flips). Hatched grey: pruned (zero output weights), which costs nothing as an idle "
             "component does.</p>")
    if any(s != t for s, t in mapping.items()) or len(mapping) != _shape(report.teacher)[0]:
        heat += _alignment_note(report, mapping, layer_map is not None, p)

    corr = correspondence_part(report, mapping, teacher, student, p)

    dist = _img(figures.drop_distributions(_distribution_models(
        [(f"teacher {teacher}", report.teacher), (f"student {student}", report.student)]),
        tolerance), "drop distributions")

    align = '<div class="facts">' + "".join(
        f'<div class="fact"><div class="label">{esc(label)}</div><div class="big">{value}</div>'
        "</div>" for label, value in [
            ("A (paper)", num(p + "alignment.score.2", a.score)),
            ("mean similarity", num(p + "alignment.mean_similarity", a.mean_similarity)),
            ("influence term", num(p + "alignment.influence_term", a.influence_term)),
            ("weighted variant", num(p + "alignment.weighted_score.2", a.weighted_score)),
            ("matched pairs", num(p + "alignment.n_pairs", len(a.pairs))),
        ]) + "</div>"
    align += ('<p class="note">A = mean over matched pairs of similarity x (1 - |student share - '
              "teacher share|); it stays close to the mean similarity, so the weighted variant, "
              "in which influence really weighs, is shown beside it.</p>")
    align += "<p>Pairs that pull A down most:</p>" + _table(
        ["teacher", "student", "similarity", "teacher share", "student share", "term"],
        [[esc(m.teacher), esc(m.student), num(f"{p}pair.{m.teacher}.similarity", m.similarity),
          num(f"{p}pair.{m.teacher}.teacher_share", m.teacher_share),
          num(f"{p}pair.{m.teacher}.student_share", m.student_share),
          num(f"{p}pair.{m.teacher}.contribution", m.contribution)] for m in a.weakest(5)],
        numeric=(2, 3, 4, 5),
    )

    headers, rows = _brittleness_rows(
        [("teacher", report.teacher), ("student", report.student)], report.brittleness_delta, p)
    brittle = _table(headers, rows, numeric=tuple(range(1, len(headers))))
    brittle += (f'<p class="note">Over every head and MLP; mean drop with its 95% bootstrap '
                f"interval (over components); severity counts how far drops exceed "
                f"T = {fmt(tolerance)} points.</p>")

    if report.discarded:
        disc = _table(
            ["teacher component", "teacher influence", "best student match", "similarity",
             "student influence", "why"],
            [[esc(d.teacher), num(f"{p}discarded.{d.teacher}.teacher_influence",
                                  d.teacher_influence),
              esc(d.student or "none"), num(f"{p}discarded.{d.teacher}.similarity", d.similarity),
              num(f"{p}discarded.{d.teacher}.student_influence", d.student_influence),
              esc(d.reason)] for d in report.discarded],
            numeric=(1, 3, 4),
        )
    else:
        disc = ('<p>None: every influential teacher component has a similar, influential '
                "student counterpart.</p>")

    parts = {
        "overview": ("Overview", overview),
        "heatmaps": ("Where the task lives: drop per head and MLP", heat),
        "correspondence": ("Teacher to student correspondence (fan-in = compression)", corr),
        "distributions": ("Drop distributions", dist),
        "alignment": ("Alignment score and its parts", align),
        "brittleness": ("Brittleness", brittle),
        "gates": ("Gates and verdicts", _gates_table(gates, p)),
        "discarded": ("Discarded mechanisms", disc),
        "fingerprint": ("Method fingerprint", _fingerprint_table(
            report.fingerprint, [("teacher", report.teacher.model),
                                 ("student", report.student.model)])),
    }
    body = "".join(_part(name, *parts[name]) for name in PAIR_PARTS)
    return (f'<section class="report" id="{anchor}" data-kind="pair" data-task="{esc(report.task)}"'
            f' data-teacher="{esc(teacher)}" data-student="{esc(student)}">'
            f"<h2>{esc(teacher)} &rarr; {esc(student)} &middot; task {esc(report.task)}</h2>"
            f"{body}</section>")


def model_section(report: Any, gates: Sequence[Gate]) -> str:
    """One model on its own (a gate that checked a single model)."""
    name = model_name(report.model)
    anchor = slug(report.task, name)
    p = f"{anchor}:"
    perf = report.performance
    overview = _table(
        ["model", "clean logit difference", "accuracy", "prompts"],
        [[esc(name), num(p + "model.logit_diff", perf.mean_logit_diff),
          num(p + "model.accuracy", perf.accuracy), str(perf.n_prompts)]], numeric=(1, 2, 3))
    heat = _img(figures.heatmaps([_grid(report, name)]), "per-head and MLP drops")
    dist = _img(figures.drop_distributions(_distribution_models([(name, report)]),
                                           float(report.brittleness.tolerance)),
                "drop distribution")
    headers, rows = _brittleness_rows([("model", report)], None, p)
    parts = {
        "overview": ("Overview", overview),
        "heatmaps": ("Where the task lives: drop per head and MLP", heat),
        "distributions": ("Drop distribution", dist),
        "brittleness": ("Brittleness", _table(headers, rows, numeric=(1,))),
        "gates": ("Gates and verdicts", _gates_table(gates, p)),
        "fingerprint": ("Method fingerprint",
                        _fingerprint_table(report.fingerprint, [("model", report.model)])),
    }
    body = "".join(_part(key, *parts[key]) for key in MODEL_PARTS)
    return (f'<section class="report" id="{anchor}" data-kind="model" '
            f'data-task="{esc(report.task)}" data-model="{esc(name)}">'
            f"<h2>{esc(name)} &middot; task {esc(report.task)}</h2>{body}</section>")


# ----------------------------------------------------------------------------- the page


@dataclass
class Page:
    """What goes on one page: typed reports, the gates of the run, a title."""

    reports: list[Any]
    gates: list[Gate] = field(default_factory=list)
    title: str = "pytest-circuits report"
    #: student layer -> teacher layer for the pairs whose models differ in depth (None: read
    #: from each pair's matching)
    layer_map: Mapping[int, int] | None = None
    #: circuits and roles (CircuitsReport), one section each; given in ``reports`` they are
    #: moved here, and a pair's takes the matching of the pair report of the same models
    circuits: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        found = [r for r in self.reports if is_circuits_report(r)]
        self.reports = [r for r in self.reports if not is_circuits_report(r)]
        matchings = {((model_name(r.teacher.model), model_name(r.student.model)), r.task): r
                     for r in self.reports if is_pair_report(r)}
        self.circuits = [
            r.with_matching(matchings[r.key].alignment.pairs) if r.key in matchings else r
            for r in [*self.circuits, *found]]


def _contents(page: Page) -> str:
    rows = []
    for report in page.reports:
        if is_pair_report(report):
            t, s = model_name(report.teacher.model), model_name(report.student.model)
            anchor = slug(report.task, t, "to", s)
            chosen = gates_for(page.gates, t, s, report.task)
            rows.append([f'<a href="#{anchor}">{esc(t)} &rarr; {esc(s)}</a>', esc(report.task),
                         fmt(report.behavior_retained), fmt(report.alignment.score),
                         fmt(report.alignment.weighted_score),
                         f"{fmt(report.teacher.brittleness.severity)} &rarr; "
                         f"{fmt(report.student.brittleness.severity)}",
                         str(len(report.discarded)), _verdicts(chosen)])
        else:
            name = model_name(report.model)
            chosen = gates_for(page.gates, None, name, report.task)
            rows.append([f'<a href="#{slug(report.task, name)}">{esc(name)}</a>',
                         esc(report.task), "-", "-", "-", fmt(report.brittleness.severity), "-",
                         _verdicts(chosen)])
    return "<nav>" + _table(
        ["pair", "task", "behaviour retained (%)", "A", "weighted A", "severity", "discarded",
         "gates"], rows, numeric=(2, 3, 4, 5, 6)) + "</nav>"


#: The gates whose results a circuits-and-roles section shows.
CIRCUIT_GATES = ("circuit_faithful", "roles_preserved")


def circuit_gates(gates: Sequence[Gate], bundle: Any) -> list[Gate]:
    """The circuit and roles gates that checked ``bundle``'s models on its task."""
    names, task = bundle.key
    teacher, subject = (names[0], names[1]) if len(names) == 2 else (None, names[0])
    return [g for g in gates_for(gates, teacher, subject, task) if g.result.gate in CIRCUIT_GATES]


def _circuit_contents(page: Page) -> str:
    rows = []
    for bundle in page.circuits:
        names, task = bundle.key
        rows.append([f'<a href="#{section_id(bundle)}">{esc(" -> ".join(names))}</a>',
                     esc(task), circuits_summary(bundle),
                     _verdicts(circuit_gates(page.gates, bundle))])
    return "<nav>" + _table(["circuits and roles", "task", "summary", "gates"], rows) + "</nav>"


def _verdicts(gates: Sequence[Gate]) -> str:
    if not gates:
        return "-"
    counts: dict[str, int] = {}
    for gate in gates:
        counts[gate.verdict] = counts.get(gate.verdict, 0) + 1
    return " ".join(f'<span class="badge {v}">{n} {v}</span>' for v, n in sorted(counts.items()))


def _stored(report: Any) -> dict[str, Any]:
    data = report.to_dict()
    if "circuits" in data and data.get("pair") is not None:
        data["pair"] = None  # the pair report has its own entry
    return data


def _data_block(reports: Sequence[Any]) -> str:
    """The reports as JSON inside the page (inert data, not script), for tools and checks."""

    text = json.dumps(plain([_stored(r) for r in reports]), allow_nan=True)
    # every "<" as its JSON escape (JSON has "<" only inside strings): a name holding
    # "</script>" cannot end the block, nor one holding "<!--<script>" put the browser's parser
    # into the script-escape states in which the block's own end tag no longer ends it
    text = text.replace("<", "\\u003c")
    return f'<script type="application/json" id="circuits-data">{text}</script>'


def render(page: Page) -> str:
    """The whole HTML document as a string."""
    sections = []
    for report in page.reports:
        if is_pair_report(report):
            t, s = model_name(report.teacher.model), model_name(report.student.model)
            sections.append(pair_section(report, gates_for(page.gates, t, s, report.task),
                                         page.layer_map))
        else:
            name = model_name(report.model)
            sections.append(model_section(report, gates_for(page.gates, None, name,
                                                            report.task)))
    for bundle in page.circuits:
        sections.append(circuits_section(bundle, circuit_gates(page.gates, bundle),
                                         _gates_table))
    covered = {id(g) for r in page.reports for g in (
        gates_for(page.gates, model_name(r.teacher.model), model_name(r.student.model), r.task)
        if is_pair_report(r) else gates_for(page.gates, None, model_name(r.model), r.task))}
    covered |= {id(g) for bundle in page.circuits for g in circuit_gates(page.gates, bundle)}
    others = [g for g in page.gates if id(g) not in covered]
    if others:
        sections.append('<section class="report" id="other-gates" data-kind="gates">'
                        "<h2>Other gates</h2>" + _part("gates", "Gates without a stored analysis",
                                                       _gates_table(others, "other:"))
                        + "</section>")
    if not sections:
        sections.append('<section class="report"><h2>No results</h2><p>No gate or analysis '
                        "result was recorded in this run.</p></section>")
    from .. import __version__

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(page.title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{esc(page.title)}</h1><p>pytest-circuits {esc(__version__)}: how each "
        "student computes compared with its teacher (Haskins &amp; Adams, Distilled Circuits)."
        "</p></header><main>"
        + (_contents(page) if page.reports else "")
        + (_circuit_contents(page) if page.circuits else "")
        + "".join(sections)
        + _data_block([*page.reports, *page.circuits])
        + "</main></body></html>\n"
    )


def snippet(reports: Sequence[Any], gates: Sequence[Gate],
            layer_map: Mapping[int, int] | None = None) -> str:
    """A compact fragment for pytest-html's extras: verdicts, key numbers, small heatmaps."""
    blocks = []
    for report in reports:
        if is_circuits_report(report):
            names, task = report.key
            blocks.append(
                f'<div class="circuits-extra"><b>circuits and roles: '
                f'{esc(" -> ".join(names))} &middot; {esc(task)}</b> '
                f"{_verdicts(circuit_gates(gates, report))}<br>"
                f"<small>{circuits_summary(report)}</small></div>")
            continue
        if is_pair_report(report):
            t, s = model_name(report.teacher.model), model_name(report.student.model)
            chosen = gates_for(gates, t, s, report.task)
            image = figures.heatmaps(_pair_grids(report, pair_layer_map(report, layer_map), t,
                                                 s), scale=0.7)
            facts = (f"A {fmt(report.alignment.score)} (weighted "
                     f"{fmt(report.alignment.weighted_score)}), behaviour retained "
                     f"{fmt(report.behavior_retained)}%, severity "
                     f"{fmt(report.teacher.brittleness.severity)} &rarr; "
                     f"{fmt(report.student.brittleness.severity)}, "
                     f"{len(report.compressed)} compressed, {len(report.discarded)} discarded")
            title = f"{esc(t)} &rarr; {esc(s)} &middot; {esc(report.task)}"
        else:
            name = model_name(report.model)
            chosen = gates_for(gates, None, name, report.task)
            image = figures.heatmaps([_grid(report, name)], scale=0.7)
            b = report.brittleness
            facts = (f"severity {fmt(b.severity)}, worst drop {fmt(b.worst_drop)} "
                     f"({esc(b.worst_component)})")
            title = f"{esc(name)} &middot; {esc(report.task)}"
        blocks.append(
            f'<div class="circuits-extra"><b>{title}</b> {_verdicts(chosen)}<br>'
            f"<small>{facts}</small><br>{_img(image, 'drops per head and MLP')}</div>")
    if not blocks:  # nothing drawable: no fragment, rather than an empty frame
        return ""
    return ('<div class="circuits-extras"><style>.circuits-extras .badge{padding:0 6px;'
            "border-radius:8px}.circuits-extras .PASS{background:#cfe9df}.circuits-extras "
            ".FAIL{background:#f6d5c4}.circuits-extras .XFAIL{background:#e6e1ef}</style>"
            + "".join(blocks) + "</div>")
