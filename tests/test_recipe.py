"""quantize.Recipe: the one value that names what `quantize` does beyond the widths."""
import pytest

from asrquant.quantize import RECIPES, Recipe, default_recipe


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
    assert Recipe.resolve("default", 4, conformer=True).name == "paper"


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

    from asrquant.quantize import quantize
    assert set(s) <= set(inspect.signature(quantize).parameters)
