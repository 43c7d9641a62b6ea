"""The report's "circuits and roles" section: a model's (or a pair's) circuits side by side, each
node coloured by the head roles it holds and matched teacher -> student nodes joined, the
threshold sweep, and the role table. Drawn as inline SVG from a typed
:class:`~pytest_circuits.results.CircuitsReport`; every name is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..results.roles import ROLE_SPECS, ROLES
from .markup import esc, fmt, num, slug
from .markup import part as _part
from .markup import table as _table

#: The parts of a circuits-and-roles section, in order (``data-part`` attributes).
CIRCUIT_PARTS = ("overview", "circuits", "stability", "roles", "gates")

#: One fill per role (colour-blind safe where it matters: the Tableau 10 hues).
ROLE_COLOURS = {
    "previous_token": "#4e79a7",
    "duplicate_token": "#f28e2b",
    "induction": "#e15759",
    "similar_member": "#76b7b2",
    "mover": "#59a14f",
    "inhibition": "#b07aa1",
}
_HEAD = "#dfe3e8"  # a head holding no role (or no roles measured)
_MLP = "#a9b1ba"

_BOX_W, _BOX_H, _GAP, _ROW_H, _LABEL_W, _BETWEEN = 48, 20, 4, 38, 34, 90


def section_id(report: Any) -> str:
    names, task = report.key
    return slug("circuits", task, *names)


def _title(report: Any) -> str:
    names = report.names()
    if report.is_pair:
        return f"{esc(names['teacher'])} &rarr; {esc(names['student'])}"
    return esc(names.get("model", ""))


def _node_roles(report: Any, role: str, node: str) -> list[str]:
    roles = report.roles.get(role)
    if roles is None or node.startswith("MLP") or node not in roles.heads:
        return []
    held = set(roles.roles_of(node))
    return [r for r in ROLES if r in held]  # the legend's order


def _column(report: Any, role: str, x0: float, n_rows: int) -> tuple[list[str], dict[str, tuple[
        float, float, float]]]:
    """One model's circuit as SVG elements, and each node's (left x, right x, centre y)."""
    circuit = report.circuits[role]
    parts = [f'<text x="{x0 + _LABEL_W}" y="14" font-weight="600">{esc(role)} '
             f"{esc(circuit.model)}</text>"]
    where: dict[str, tuple[float, float, float]] = {}
    layers = circuit.by_layer()
    for layer in range(n_rows):
        y = 24 + layer * _ROW_H
        parts.append(f'<text x="{x0}" y="{y + 14}" fill="#555">L{layer}</text>')
        for i, node in enumerate(layers.get(layer, [])):
            x = x0 + _LABEL_W + i * (_BOX_W + _GAP)
            held = _node_roles(report, role, node)
            fills = [ROLE_COLOURS[r] for r in held] or [_MLP if node.startswith("MLP")
                                                         else _HEAD]
            band = _BOX_W / len(fills)
            what = ("MLP" if node.startswith("MLP") else ", ".join(held) if held else
                    "no role" if report.roles.get(role) is not None else "roles not measured")
            tip = f"{node}: {what}" + (
                f"; drop {fmt(circuit.node_drops[node])} points"
                if node in circuit.node_drops else "")
            parts.append(f'<g class="node" data-model="{esc(role)}" data-node="{esc(node)}" '
                         f'data-roles="{esc(" ".join(held))}"><title>{esc(tip)}</title>')
            parts += [f'<rect x="{x + k * band:.1f}" y="{y}" width="{band:.1f}" '
                      f'height="{_BOX_H}" fill="{fill}"/>' for k, fill in enumerate(fills)]
            parts.append(f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" '
                         'fill="none" stroke="#333" stroke-width="0.6"/>'
                         f'<text x="{x + _BOX_W / 2}" y="{y + 14}" text-anchor="middle">'
                         f"{esc(node)}</text></g>")
            where[node] = (x, x + _BOX_W, y + _BOX_H / 2)
    return parts, where


def _width(circuit: Any) -> float:
    widest = max((len(nodes) for nodes in circuit.by_layer().values()), default=1)
    return _LABEL_W + max(widest, 3) * (_BOX_W + _GAP)


def circuits_svg(report: Any) -> str:
    """The circuits side by side (teacher left), matched nodes joined by lines."""
    roles = [r for r in report.model_roles() if r in report.circuits]
    n_rows = max(report.circuits[r].n_layers for r in roles)
    elements: list[str] = []
    places: dict[str, dict[str, tuple[float, float, float]]] = {}
    x = 4.0
    for role in roles:
        parts, places[role] = _column(report, role, x, n_rows)
        elements += parts
        x += _width(report.circuits[role]) + _BETWEEN
    lines = []
    if "teacher" in places and "student" in places:
        shown = [(t, s) for t, s in report.matched
                 if t in places["teacher"] and s in places["student"]]
        for k, (teacher, student) in enumerate(shown):
            # from the bottom middle of one box to the bottom middle of the other, dipping into
            # the gap below the row by a different depth each, so that links between nodes of
            # one row neither cross the boxes beside them nor hide behind one another
            left, right, y1 = places["teacher"][teacher]
            left2, right2, y2 = places["student"][student]
            x1, x2 = (left + right) / 2, (left2 + right2) / 2
            b1, b2 = y1 + _BOX_H / 2, y2 + _BOX_H / 2
            dip = (_ROW_H - _BOX_H) * (0.35 + 0.6 * (k + 1) / (len(shown) + 1))
            low = max(b1, b2) + dip
            lines.append(f'<path class="match" data-teacher="{esc(teacher)}" '
                         f'data-student="{esc(student)}" d="M{x1:.1f},{b1:.1f} '
                         f'C{x1:.1f},{low:.1f} {x2:.1f},{low:.1f} {x2:.1f},{b2:.1f}" '
                         'fill="none" stroke="#0b3d5c" stroke-opacity="0.6" '
                         'stroke-width="1.4"/>')
    height = 24 + n_rows * _ROW_H + 4
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{x:.0f}" height="{height}" '
            f'font-size="11" font-family="system-ui,sans-serif" role="img" '
            f'aria-label="circuits by layer">{"".join(elements)}{"".join(lines)}</svg>')


def _legend() -> str:
    swatches = [(r.replace("_", "-"), ROLE_COLOURS[r]) for r in ROLES] + [
        ("head, no role", _HEAD), ("MLP", _MLP)]
    return '<p class="note">' + " ".join(
        f'<span style="display:inline-block;width:11px;height:11px;background:{colour};'
        f'border:1px solid #333;vertical-align:middle"></span> {esc(label)}&nbsp;'
        for label, colour in swatches) + "</p>"


def _overview(report: Any, p: str) -> str:
    if not report.circuits:
        return ('<p class="note">No circuit was discovered for these models and task in this '
                "run (the circuit_faithful gate or <code>pytest-circuits compare --circuits"
                "</code> discovers one).</p>")
    rows = []
    for role in report.model_roles():
        c = report.circuits.get(role)
        if c is None:
            continue
        q = f"{p}circuit.{role}."
        rows.append([esc(f"{role} {c.model}"), num(q + "nodes", c.size),
                     num(q + "heads", c.n_heads), num(q + "mlps", c.n_mlps),
                     num(q + "faithfulness", c.faithfulness),
                     num(q + "completeness", c.completeness),
                     num(q + "worst_node_drop", c.worst_node_drop),
                     esc(", ".join(f"{n} {d:.1f}" for n, d in c.critical_nodes(3)) or "-"),
                     f"T={esc(fmt(c.threshold))}, {esc(c.ablation)} ablation, "
                     f"{esc(fmt(c.cost_fe))} FE"])
    return _table(["model", "nodes", "heads", "MLPs", "faithfulness", "completeness",
                   "worst node drop (points)", "most critical nodes (drop)", "found with"],
                  rows, numeric=(1, 2, 3, 4, 5, 6)) + (
        '<p class="note">Faithfulness: the logit difference with only the circuit kept (every '
        "other head and MLP ablated) over the full model's. Completeness: 1 minus the logit "
        "difference with the circuit ablated and the rest kept, over the full model's.</p>")


def _circuits_part(report: Any) -> str:
    if not report.circuits:
        return '<p class="note">No circuit to draw.</p>'
    note = ""
    if report.is_pair and "student" in report.circuits and "teacher" in report.circuits:
        if report.matched:
            teacher, student = report.circuits["teacher"], report.circuits["student"]
            joined = sum(1 for t, s in report.matched
                         if t in teacher.nodes and s in student.nodes)
            note = (f'<p class="note">Lines join each teacher circuit node to the student node '
                    f"the alignment matched it to, when both are in their circuits: "
                    f"{joined} of {teacher.size} teacher nodes.</p>")
        else:
            note = ('<p class="note">No matching was measured for this pair in this run, so no '
                    "nodes are joined (an alignment gate or the roles gate measures one).</p>")
    colour = (" Nodes are coloured by the head roles they hold." if report.roles else
              " No head roles were measured, so heads are not coloured by role.")
    return (f'<p class="note">Nodes by layer (layer 0 at the top).{colour}</p>' + _legend()
            + circuits_svg(report) + note)


def _stability_part(report: Any, p: str) -> str:
    rows = []
    for role in report.model_roles():
        c = report.circuits.get(role)
        if c is None:
            continue
        for point in c.stability:
            q = f"{p}stability.{role}.{point.threshold:g}."
            rows.append([esc(f"{role} {c.model}"), num(q + "threshold", point.threshold),
                         num(q + "nodes", len(point.nodes)),
                         num(q + "faithfulness", point.faithfulness),
                         num(q + "jaccard", point.jaccard),
                         esc(" ".join(point.nodes) or "(empty)")])
    if not rows:
        return ('<p class="note">No threshold sweep was run (the gate discovers at one '
                "threshold; <code>pytest-circuits circuit</code> and <code>compare --circuits"
                "</code> sweep T).</p>")
    return _table(["model", "threshold T", "nodes", "faithfulness",
                   "Jaccard with the circuit", "circuit"], rows, numeric=(1, 2, 3, 4))


def _holders(roles: Any, role: str, p: str) -> str:
    if roles is None:
        return "-"
    if role in roles.not_applicable:
        return f"<small>n/a: {esc(roles.not_applicable[role])}</small>"
    if role not in roles.scores:
        return "-"
    held = roles.holders(role)
    return (esc(", ".join(held)) or "none") + " <small>(best " + num(
        f"{p}best", roles.best(role)) + ")</small>"


def _roles_part(report: Any, p: str) -> str:
    if not report.roles:
        return ('<p class="note">No head roles were measured for these models and task in this '
                "run (the roles_preserved gate or <code>--roles</code> measures them).</p>")
    comparison = report.comparison
    merged_by_role: dict[str, list[str]] = {}
    if comparison is not None:
        for m in comparison.merged:
            for role in m.roles:
                merged_by_role.setdefault(role, []).append(m.student)
    matched = dict(report.matched)
    roles = [r for r in ROLES if any(r in x.scores or r in x.not_applicable
                                     for x in report.roles.values())]
    model_roles = report.model_roles()
    headers = ["role", "threshold"] + [f"{r} holders" for r in model_roles if r in report.roles]
    if report.is_pair:
        headers += ["teacher holders' matches", "discarded", "merged into"]
    rows = []
    for role in roles:
        threshold = next(x.thresholds[role] for x in report.roles.values()
                         if role in x.thresholds) if any(
            role in x.thresholds for x in report.roles.values()) else ROLE_SPECS[role].threshold
        row = [f'<span title="{esc(ROLE_SPECS[role].meaning)}">{esc(role)}</span>',
               num(f"{p}role.{role}.threshold", threshold)]
        for model_role in model_roles:
            if model_role in report.roles:
                row.append(_holders(report.roles[model_role], role,
                                    f"{p}role.{role}.{model_role}."))
        if report.is_pair:
            teacher = report.roles.get("teacher")
            held = teacher.holders(role) if teacher is not None else []
            row.append(esc(", ".join(f"{t}->{matched.get(t) or '-'}" for t in held)) or "-")
            discarded = comparison is not None and role in comparison.discarded
            row.append('<span class="badge FAIL">discarded</span>' if discarded else "no")
            merged = merged_by_role.get(role, [])
            row.append(f'<span class="warn">{esc(", ".join(merged))}</span>' if merged else "-")
        rows.append(row)
    table = _table(headers, rows, numeric=(1,))
    notes = []
    if comparison is not None:
        for m in comparison.merged:
            notes.append(f"merged: student {esc(m.student)} holds {esc(' + '.join(m.roles))}, "
                         "which no teacher head holds together")
        for role, heads in comparison.discarded.items():
            notes.append(f"discarded: {esc(role)} (held by teacher {esc(', '.join(heads))}; no "
                         "student head holds it)")
    return table + "".join(f'<p class="note">{n}</p>' for n in notes)


def circuits_section(report: Any, gates: Sequence[Any], gates_table: Any) -> str:
    """The whole section for one :class:`CircuitsReport`."""
    anchor = section_id(report)
    p = anchor + ":"
    parts = {
        "overview": ("Circuits", _overview(report, p)),
        "circuits": ("The circuits by layer", _circuits_part(report)),
        "stability": ("Threshold sweep (stability)", _stability_part(report, p)),
        "roles": ("Head roles", _roles_part(report, p)),
        "gates": ("Gates and verdicts", gates_table(gates, p)),
    }
    names, task = report.key
    body = "".join(_part(key, *parts[key]) for key in CIRCUIT_PARTS)
    return (f'<section class="report" id="{anchor}" data-kind="circuits" '
            f'data-task="{esc(task)}" data-models="{esc(" ".join(names))}">'
            f"<h2>Circuits and roles: {_title(report)} &middot; task {esc(task)}</h2>"
            f"{body}</section>")


def circuits_summary(report: Any) -> str:
    """One line for the contents and pytest-html: sizes, faithfulness, discarded roles."""
    bits = [f"{esc(role)} {c.size} nodes (faithfulness {fmt(c.faithfulness)})"
            for role in report.model_roles() if (c := report.circuits.get(role)) is not None]
    if report.comparison is not None:
        discarded = ", ".join(report.comparison.discarded)
        bits.append(f"discarded roles: {esc(discarded) or 'none'}")
        bits.append(f"merged heads: {len(report.comparison.merged)}")
    elif report.roles:
        bits += [f"{esc(role)} roles held: {esc(', '.join(x.held) or 'none')}"
                 for role, x in report.roles.items()]
    return "; ".join(bits)


def is_circuits_report(report: Any) -> bool:
    return hasattr(report, "circuits") and hasattr(report, "comparison")

