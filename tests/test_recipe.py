"""quantize.Recipe: the one value that names what `quantize` does beyond the widths."""
import pytest

from intasr.quantize import RECIPES, Recipe, default_recipe, quantize


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_default_is_the_widths_recipe(bits):
    r = Recipe.resolve("default", bits)
    assert r.name == r.label == default_recipe(bits)
    assert r.bias_correction == RECIPES[r.name]["bias_correction"]
    assert r.weight_group == RECIPES[r.name].get("weight_group", 0)


def test_flags_replace_the_default_with_the_papers_method_and_say_so():
    r = Recipe.resolve("default", 4, rounding="gptq")
    assert (r.name, r.label, r.rounding, r.weight_group) == ("paper", "flags", "gptq", 0)
    assert Recipe.resolve("default", 4, bias_correction=True).settings()["bias_correction"] is True



def test_a_conformers_default_is_the_widths_recipe_without_equalization():
    # the Conformer takes the same recipes (conformer_weights); it has no separable pairs to equalize
    r = Recipe.resolve("default", 4, conformer=True)
    assert r.name == default_recipe(4, conformer=True) and r.weight_group == RECIPES[r.name].get("weight_group", 0)
    assert Recipe.resolve("default", 6, conformer=True).name == default_recipe(6, conformer=True) == "adaround"
    assert Recipe.resolve("default", 6).name == default_recipe(6) == "bc"
    assert r.equalize is False and Recipe.resolve("default", 4).equalize is RECIPES[r.name].get("equalize", False)


def test_a_size_budget_allocates_every_conv():
    r = Recipe.resolve("grouped", 4, size_budget_mb=10.0)
    assert r.edge_bits is None and r.weight_group == 0
    assert Recipe.resolve("grouped", 4).edge_bits == RECIPES["grouped"]["edge_bits"]


def test_overrides_win_and_settings_are_quantizes_keywords():
    r = Recipe.resolve("grouped", 4, edge_bits=6, equalize=False, weight_group=32, adaround_iterations=7,
                       block_iterations=3, adaround_cache="cache")
    s = r.settings()
    assert (s["edge_bits"], s["equalize"], s["weight_group"]) == (6, False, 32)
    assert s["adaround"]["iterations"] == 7 and s["adaround"]["block_iterations"] == 3
    assert s["adaround"]["cache_dir"] == "cache"
    assert set(s) == {"rounding", "bias_correction", "adaround", "edge_bits", "equalize", "weight_group"}
    import inspect

    assert set(s) <= set(inspect.signature(quantize).parameters)


# ---- the runners pass one Recipe: quantize gets what they used to spell out keyword by keyword ----

class _Called(Exception):
    pass


def _recording(log):
    """A stand-in for quantize: records every argument as quantize binds it (defaults filled in), then stops."""
    import inspect

    def fake(*args, **kwargs):   # quantize as imported above: the real one, whatever a test patches
        bound = inspect.signature(quantize).bind(*args, **kwargs)
        bound.apply_defaults()
        log.append({k: (type(v).__name__, v) for k, v in bound.arguments.items()})
        raise _Called

    return fake


def _bound(*args, **kwargs):
    log = []
    with pytest.raises(_Called):
        _recording(log)(*args, **kwargs)
    return log[0]


RUNS = [dict(), dict(raw=True, symmetric=True, bias_correction=True), dict(scale_search=True, relu_aware=True,
        edge_bits=8, equalize=True, block_iterations=50, weight_group=16), dict(rounding="nearest", bias_correction=True),
        dict(rounding="gptq", calibration="real", edge_bits=8), dict(rounding="nearest", equalize=True, weight_group=16)]


@pytest.mark.parametrize("opts", RUNS)
@pytest.mark.parametrize("budget", [None, 9.5])
def test_recipe_runs_quantize_as_spelled_out(monkeypatch, opts, budget):
    from intasr import paths, recipe_runs

    log = []
    monkeypatch.setattr(recipe_runs, "quantize", _recording(log))
    monkeypatch.setattr(recipe_runs, "calibration_batches", lambda *a, **k: ["batch"])
    run = recipe_runs.RecipeRuns(model="m.nemo", data="d", out="o", iterations=123, **opts)
    key = recipe_runs.settings_of(run, "m", 2, 4, 8, budget)
    with pytest.raises(_Called):
        recipe_runs.measure(run, "model", [], key)
    # the keywords tools/run_adaround.py passed before it built a Recipe
    assert log[0] == _bound(
        "model", ["batch"], 4, 8, bias_correction=run.bias_correction, rounding=run.rounding,
        adaround={"iterations": run.iterations, "centered": key["adaround_centered"], "asymmetric": not run.symmetric,
                  "scale_search": run.scale_search, "relu_aware": run.relu_aware,
                  "block_iterations": run.block_iterations, "cache_dir": str(paths.build_dir() / "adaround_cache")},
        size_budget_mb=budget, edge_bits=run.edge_bits or None, equalize=run.equalize, weight_group=run.weight_group,
        info={"calibration": run.calibration, "seed": 2})
    assert recipe_runs.recipe_of_run(run, key).name == recipe_runs.recipe_of(key)   # the row's recipe column


@pytest.mark.parametrize("rounding", ["nearest", "gptq", "adaround"])
@pytest.mark.parametrize("bias_correction", [False, True, 1])
def test_grid_cell_quantizes_as_spelled_out(monkeypatch, rounding, bias_correction):
    from intasr import gridrun
    from intasr import quantize as quantize_module

    log = []
    monkeypatch.setattr(quantize_module, "quantize", _recording(log))
    monkeypatch.setattr(gridrun, "_float_model", lambda *a: "model")
    monkeypatch.setattr(gridrun, "_threads", lambda n: None)
    s = dict(calibration="real", observer="percentile", weight_method="mse", bias_correction=bias_correction,
             rounding=rounding, depthwise_bits=4, seed=3, w_bits=4, a_bits=8, nonlinear="integer")
    with pytest.raises(_Called):
        gridrun.quantize_cell("m", "sha", s, None, ["batch"])
    assert log[0] == _bound("model", ["batch"], 4, 8, observer="percentile", weight_method="mse",
                            bias_correction=bool(bias_correction), rounding=rounding, depthwise_bits=4,
                            info={"calibration": "real", "seed": 3})


@pytest.mark.parametrize("no_bc,budget,uniform", [(False, 9.5, None), (True, 9.5, None), (False, None, 6)])
def test_size_sweep_cell_quantizes_as_spelled_out(monkeypatch, no_bc, budget, uniform):
    from intasr import size_sweep

    class Seed:
        seed = 4

        def get_batches(self):
            return ["batch"]

        def sensitivity_seconds(self, bc):
            return 1.0

    log = []
    monkeypatch.setattr(size_sweep, "quantize", _recording(log))
    monkeypatch.setattr(size_sweep.mp, "allocate_bits", lambda *a, **k: {})
    run = size_sweep.SizeSweepRuns(model="m", data="d", out="o", cache_dir="c", sensitivity_cache="sc",
                                   no_bias_correction=no_bc)
    with pytest.raises(_Called):
        size_sweep.measure_cell(run, "model", [], Seed(), size_sweep.cell_settings(run, "m", 4, budget, uniform, {}))
    assert log[0] == _bound("model", ["batch"], uniform or 4, 8, bias_correction=not no_bc, size_budget_mb=budget,
                            mixed_precision={"bias_correction": not no_bc, "cache_dir": "sc"},
                            info={"calibration": "synthetic", "seed": 4}, progress=False)
