"""Scenario parsing, validation and sweep expansion."""

import re

import pytest

from fedshield.simulations import scenario as sc
from fedshield.simulations.scenario import ScenarioError


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ScenarioError, match=r"unknown scenario key 'agregator'.*'aggregator'"):
        sc.from_dict({"agregator": "krum"})


def test_invalid_value_names_the_key():
    scen = sc.from_dict({"rounds": 0})
    with pytest.raises(ScenarioError, match="rounds must be >= 1"):
        sc.expand(scen)
    with pytest.raises(ScenarioError, match="num_clients must be of type int"):
        sc.expand(sc.from_dict({"num_clients": "many"}))
    with pytest.raises(ScenarioError, match="engine must be one of"):
        sc.from_dict({"engine": "ray"})
    with pytest.raises(ScenarioError, match="seeds must be a non-empty list"):
        sc.from_dict({"seeds": ["a"]})
    with pytest.raises(ScenarioError, match="target_accuracy"):
        sc.from_dict({"target_accuracy": 2})
    with pytest.raises(ScenarioError, match="lr: an empty list"):
        sc.from_dict({"lr": []})
    with pytest.raises(ScenarioError, match="aggregator: an inline table needs a 'name'"):
        sc.expand(sc.from_dict({"aggregator": [{"f": 1}]}))


def test_cartesian_product_in_file_order_with_stable_ids():
    scen = sc.from_dict({"aggregator": ["fedavg", {"name": "krum", "f": 2}],
                         "attack": ["none", "labelflip"], "seeds": [0, 1],
                         "malicious_fraction": 0.2, "num_clients": 10})
    cells = sc.expand(scen)
    assert len(cells) == 2 * 2 * 2
    assert [(c.config.aggregator, c.config.attack, c.config.seed) for c in cells[:3]] == [
        ("fedavg", "none", 0), ("fedavg", "none", 1), ("fedavg", "labelflip", 0)]
    krum = [c for c in cells if c.config.aggregator == "krum"]
    assert all(c.config.aggregator_params == {"f": 2} for c in krum)
    assert krum[0].rule_label == "krum(f=2)"
    assert len({c.id for c in cells}) == 8
    again = sc.expand(scen)
    assert [c.id for c in again] == [c.id for c in cells]
    # the id depends on the resolved config only, not on the sweep it came from
    single = sc.expand(sc.from_dict({"aggregator": {"name": "krum", "f": 2}, "attack": "none",
                                     "seed": 0, "malicious_fraction": 0.2, "num_clients": 10}))
    assert single[0].id == krum[0].id


def test_duplicate_axis_values_are_an_error():
    with pytest.raises(ScenarioError, match="resolve to the same cell"):
        sc.expand(sc.from_dict({"rounds": [2, 2]}))


def test_auto_f_is_the_nominal_malicious_count_even_without_attack():
    cells = sc.expand(sc.from_dict({
        "aggregator": {"name": "krum", "f": "auto"}, "attack": ["none", "signflip"],
        "num_clients": 20, "malicious_fraction": 0.2}))
    assert [c.config.aggregator_params["f"] for c in cells] == [4, 4]
    sampled = sc.expand(sc.from_dict({
        "aggregator": {"name": "krum", "f": "auto"}, "num_clients": 20, "clients_per_round": 10,
        "num_malicious": 3}))
    assert sampled[0].config.aggregator_params["f"] == 2  # ceil(3 * 10 / 20)


def test_auto_f_is_resolved_inside_inner_params_of_pre_aggregators():
    cells = sc.expand(sc.from_dict({
        "aggregator": [{"name": "nnm", "f": "auto", "inner": "krum",
                        "inner_params": {"f": "auto"}},
                       {"name": "bucketing", "s": 2, "inner": "nnm",
                        "inner_params": {"f": "auto", "inner": "trimmedmean",
                                         "inner_params": {"f": "auto"}}}],
        "num_clients": 20, "num_malicious": 3}))
    assert cells[0].config.aggregator_params == {"f": 3, "inner": "krum",
                                                 "inner_params": {"f": 3}}
    assert cells[1].config.aggregator_params["inner_params"] == {
        "f": 3, "inner": "trimmedmean", "inner_params": {"f": 3}}
    sc.validate_components(cells)  # the resolved parameters build the rules


def test_overrides_parse_toml_values_lists_and_dotted_keys():
    data = sc.apply_overrides({"aggregator_params": {"f": 1}}, [
        "rounds=7", "aggregator=krum", "attack=[\"none\", \"alie\"]", "lr=0.1,0.2",
        "aggregator_params.f=3", "dataset='mnist'", "model=[mlp, logreg]", "seed=[3]"])
    assert data == {"rounds": 7, "aggregator": "krum", "attack": ["none", "alie"],
                    "lr": [0.1, 0.2], "aggregator_params": {"f": 3}, "dataset": "mnist",
                    "model": ["mlp", "logreg"], "seed": [3]}
    with pytest.raises(ScenarioError, match="must be key=value"):
        sc.parse_override("rounds")


def test_presets_load_and_expand(tmp_path):
    smoke = sc.load("smoke")
    assert smoke.name == "smoke" and len(sc.expand(smoke)) == 4
    default = sc.expand(sc.load("default"))
    assert len(default) >= 20
    assert {c.config.attack for c in default} >= {"none", "labelflip"}
    path = tmp_path / "s.toml"
    path.write_text('rounds = 2\nbogus = 1\n')
    with pytest.raises(ScenarioError, match="'bogus'"):
        sc.load(path)
    with pytest.raises(ScenarioError, match="neither a file nor a preset"):
        sc.load(tmp_path / "missing.toml")
    path.write_text("rounds = [\n")
    with pytest.raises(ScenarioError, match="invalid TOML"):
        sc.load(path)


@pytest.mark.parametrize(("override", "message"), [
    ("momentum=1.5", "momentum must be in [0, 1)"),
    ("weight_decay=-1.0", "weight_decay must be a finite number >= 0"),
    ("alpha=0.0", "alpha must be a finite number > 0"),
    ("rounds=true", "rounds must be of type int, got True"),
    ("lr='0.1'", "lr must be of type float"),
    ("q=2.0", "q must be in [0, 1]"),
])
def test_the_whole_scenario_is_validated_when_it_is_loaded(override, message):
    """A bad value fails in a second, naming the key, before any cell runs."""
    scen = sc.load("smoke", [override])
    with pytest.raises(sc.ScenarioError, match=re.escape(message)):
        sc.expand(scen)


def test_an_unwritable_output_directory_is_a_clear_error(tmp_path, capsys):
    from fedshield.simulations.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # unwritable as a directory, even for root
    code = main(["run", "smoke", "--out", str(blocker / "out"), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write the results store" in err and str(blocker) in err
