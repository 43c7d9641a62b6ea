"""The ``bridge_parity`` gate: a model's bridge computes the plain Hugging Face model's logits.

Every other gate runs this check as a preflight with the dtype's default tolerance (see
``runner.bridges_match``); this gate states it as a release condition of its own, on one model,
with a tolerance of the caller's choosing, and records the numbers so a baseline and the
reports show how close the bridge is.
"""

from __future__ import annotations

from typing import Any

from ..config.options import check_atol
from ..results import MetricCheck
from .registry import PARITY_METRICS, GateKind, Threshold, Tolerance
from .runner import GateCall, Measurement, clean_fingerprint, parity_values, run_gate


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
    atol = check_atol(atol, KIND.function_name)  # before torch loads
    return run_gate(KIND, model, task, rtol=rtol, atol=atol, n_prompts=n_prompts, seed=seed,
                    baseline_tolerance=baseline_tolerance)


def _measure(call: GateCall, method: str | None) -> Measurement:
    from ..parity import bridge_parity

    model, task = call.model, call.task
    # The check itself, not the memoised preflight: the caller's tolerance decides here.
    parity = bridge_parity(model, task, rtol=call.limits["rtol"], atol=call.extra["atol"])
    # The verdict is the parity check's own. Its rule (|diff| <= atol + rtol x scale) allows a
    # relative difference of rtol + atol / scale, more than rtol on a prompt whose logits are
    # all small; a passed check then shows its own relative difference as the threshold, so the
    # recorded check never contradicts the parity verdict. A failed one always exceeds rtol.
    threshold = parity.rtol if not parity.passed else max(parity.rtol, parity.max_rel_diff)
    return Measurement(
        value=parity,
        checks=[MetricCheck("bridge_rel_diff", parity.max_rel_diff, threshold, "<=")],
        values=parity_values(parity),
        headline=f"bridge parity of {model.name} on task '{task.name}'",
        details=lambda line: f"  {parity.message()}",
        fingerprint=clean_fingerprint(model, task, call.options.seed, analysis="parity",
                                      method="bridge"),
        models={"model": model.describe()},  # no report: the HTML page draws analyses only
    )


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
    measure=_measure,
    preflight=False,
    default_check=("the model dtype's tolerance (float32: rtol 1e-4, atol 1e-5; bfloat16: rtol "
                   "2e-2, float16: rtol 5e-3, both atol 1e-3)"),
)
