"""A gate that settles an auto sweep's verdict exactly replays only what auto left estimated:
the exact values auto measured are reused, and the completed sweep equals a fresh exact one."""

from __future__ import annotations

from pytest_circuits import cache
from pytest_circuits.analysis import ablation, store
from pytest_circuits.config import context
from pytest_circuits.models import load_model
from pytest_circuits.tasks import builtin_task


def test_an_exact_sweep_after_an_auto_one_replays_only_the_estimates(monkeypatch) -> None:
    model = load_model("zoo:tiny-teacher")
    task = builtin_task("numerals", n_prompts=16)
    replayed: list[list[str]] = []
    real = ablation._exact_metrics

    def counting(model, task, components, *args, **kwargs):
        replayed.append([c.name for c in components])
        return real(model, task, components, *args, **kwargs)

    monkeypatch.setattr(ablation, "_exact_metrics", counting)
    with context.changed(cache=context.CacheStore()):
        cache.configure(None, enabled=True)
        auto = store.sweep_result(model, task, method="auto")
        confirmed = {e.name for e in auto.effects if e.is_exact}
        estimated = {e.name for e in auto.effects if not e.is_exact}
        assert confirmed and estimated  # a real mix, or the test shows nothing
        replayed.clear()
        settled = store.sweep_result(model, task, method="exact")
    # only the estimates were replayed, each once
    assert sorted(n for call in replayed for n in call) == sorted(estimated)
    with context.changed(cache=context.CacheStore()):
        cache.configure(None, enabled=True)
        fresh = store.sweep_result(model, task, method="exact")
    assert settled.fingerprint.method == "exact"
    assert all(e.is_exact for e in settled.effects)
    assert [(e.name, e.ablated_metric, e.drop, e.stderr) for e in settled.effects] == [
        (e.name, e.ablated_metric, e.drop, e.stderr) for e in fresh.effects]
