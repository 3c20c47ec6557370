"""One model resident at a time: configuring a method keeps no model alive, and a sweep releases each cell's model
before the next cell loads (benchmarks/sweep_memory.py measures the peak RSS this buys)."""

import gc
import weakref

import pytest
from testers import save_tiny_llava, tiny_llava

from vistog_bench.model import VisToGForConditionalGeneration
from vistog_bench.reducers import applied_method, apply_method, remove_method, tokens_per_image
from vistog_bench.run import sweep
from vistog_bench.run.config import RunConfig
from vistog_bench.run.sweep import run_sweep

P = 576


def _stock():
    return VisToGForConditionalGeneration.from_llava(tiny_llava(), num_semantic_tokens=None).eval()


def _live_models() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is VisToGForConditionalGeneration)  # type(): no proxy lookups


@pytest.mark.parametrize("method", ["pool", "random", "tome", "visionzip", "prumerge", "fastv"])
def test_an_applied_method_keeps_no_model_alive(method):
    model = _stock()
    apply_method(model, method, 64, **({"fastv_layer": 1} if method == "fastv" else {}))  # the tiny LLM: 2 layers
    assert applied_method(model).method == method
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_reapplying_and_removing_keep_no_model_alive():
    model = _stock()
    apply_method(model, "tome", 64)
    apply_method(model, "fastv", 32, fastv_layer=1)  # replaces tome
    assert model.model.vision_tower.token_merge is None and tokens_per_image(model) == P
    remove_method(model)
    assert applied_method(model) is None and tokens_per_image(model) == P
    apply_method(model, "visionzip", 16)
    assert applied_method(model).budget == 16 and tokens_per_image(model) == 16
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_the_applied_state_stays_out_of_the_state_dict(tmp_path):
    model = _stock()
    keys = set(model.state_dict())
    apply_method(model, "prumerge", 64)
    assert set(model.state_dict()) == keys  # saved checkpoints do not change with the method applied


def test_sweep_releases_each_cells_model_before_the_next(tmp_path, monkeypatch):
    checkpoint = str(save_tiny_llava(tmp_path / "llava"))
    live_after_release: list[int] = []
    release = sweep._release_memory

    def release_and_count(device: str) -> None:
        release(device)
        live_after_release.append(_live_models())

    monkeypatch.setattr(sweep, "_release_memory", release_and_count)
    before = _live_models()
    config = RunConfig(
        models=(checkpoint,),
        tasks=("shapes_vqa",),
        methods=("pool", "tome", "prumerge"),
        budgets=(64,),
        limit=2,
        output=str(tmp_path / "results"),
        bootstrap_iters=0,
    )
    _, cells = run_sweep(config, command=["test"])
    assert sorted((c.method, c.status) for c in cells) == [
        ("none", "ok"),
        ("pool", "ok"),
        ("prumerge", "ok"),
        ("tome", "ok"),
    ]
    assert live_after_release == [before] * 4  # after every cell, no model of the sweep is left
