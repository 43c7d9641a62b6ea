"""The ``bridge_parity`` gate: a model's bridge computes the plain Hugging Face model's logits.

Every other gate runs this check as a preflight with the dtype's default tolerance (see
``finish.bridges_match``); this gate states it as a release condition of its own, on one model,
with a tolerance of the caller's choosing, and records the numbers so a baseline and the
reports show how close the bridge is.
"""

from __future__ import annotations

from typing import Any

from ..recording import GateResult, MetricCheck
from .finish import (
    Tolerance,
    check_atol,
    finish,
    parity_values,
    read_baseline_tolerance,
    require_gpu,
    task_options,
    tolerances,
)
from .registry import PARITY_METRICS, GateKind, Threshold


def assert_bridge_parity(
    model: Any,
    task: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """The bridge's logits match the plain Hugging Face model's on ``task``: at every prompt's
    prediction position, over the whole vocabulary, ``|bridge - plain| <= atol + rtol x`` the
    prompt's largest absolute logit. ``rtol`` and ``atol`` default to the model dtype's
    (``parity.DEFAULT_TOLERANCES``: float32 1e-4 and 1e-5). A mismatch fails naming the prompt,
    position and token of the largest difference. Returns the ``ParityResult``."""
    __tracebackhide__ = True
    limits = KIND.read_thresholds({"rtol": rtol})  # before torch loads
    gate = KIND.function_name
    atol = check_atol(atol, gate)
    n_prompts, seed = task_options(n_prompts, seed, gate)
    read_baseline_tolerance(baseline_tolerance, f"{gate}: baseline_tolerance", KIND)
    from ..analysis.ablation import make_fingerprint
    from ..analysis.cached import as_task
    from ..parity import bridge_parity

    require_gpu(gate, model)
    task = as_task(task, n_prompts, seed, model)
    # The check itself, not the memoised preflight: the caller's tolerance decides here.
    parity = bridge_parity(model, task, rtol=limits["rtol"], atol=atol)
    # The verdict is the parity check's own. Its rule (|diff| <= atol + rtol x scale) allows a
    # relative difference of rtol + atol / scale, more than rtol on a prompt whose logits are
    # all small; a passed check then shows its own relative difference as the threshold, so the
    # recorded check never contradicts the parity verdict. A failed one always exceeds rtol.
    threshold = parity.rtol if not parity.passed else max(parity.rtol, parity.max_rel_diff)
    checks = [MetricCheck("bridge_rel_diff", parity.max_rel_diff, threshold, "<=")]
    values = parity_values(parity)
    result = GateResult(
        gate=KIND.name,
        subject=model.name,
        task=task.name,
        checks=checks,
        values=values,
        fingerprint=make_fingerprint(model, task, analysis="parity", ablation="none",
                                     method="bridge", seed=seed).to_dict(),
        models={"model": model.describe()},  # no report: the HTML page draws analyses only
        tolerances=tolerances(baseline_tolerance, list(values), KIND),
    )
    finish(result, f"bridge parity of {model.name} on task '{task.name}'",
           f"  {parity.message()}", task=task)
    return parity


KIND = GateKind(
    name="bridge_parity",
    function=assert_bridge_parity,
    meaning=("the model's bridge computes the plain Hugging Face model's logits at every "
             "prompt's prediction position, within the tolerance"),
    thresholds=(
        Threshold("rtol", "bridge_rel_diff", "<=", "ratio", 0.0, 1.0),
    ),
    metrics=PARITY_METRICS,
    options=("atol",),
    takes_model=True,
    takes_pair=False,
    default_check=("the model dtype's tolerance (float32: rtol 1e-4, atol 1e-5; bfloat16: rtol "
                   "2e-2, float16: rtol 5e-3, both atol 1e-3)"),
)
