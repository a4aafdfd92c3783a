import pytest

from ckd.errors import ConfigError
from ckd.methods import default_methods_file, load_methods, resolve_method
from ckd.objectives import TERMS

DOC = load_methods(None)


def resolve(name, task="rte", **kwargs):
    return resolve_method(DOC, name, task, known_terms=set(TERMS), **kwargs)


def test_every_method_resolves_with_known_terms():
    for name in DOC["methods"]:
        method = resolve(name)
        assert method.terms, name


def test_ckd_uses_the_authors_per_task_table():
    method = resolve("ckd", task="sst2")
    weights = {t.name: t.weight for t in method.terms}
    assert weights == {"kd": 1.0, "wr_pair": 100.0, "wr_triple": 1000.0, "ltr_pair": 100.0, "ltr_triple": 1000.0}
    assert method.settings["alpha"] == 0.9 and method.settings["temperature"] == 4
    assert method.settings["lr"] == pytest.approx(4e-5) and method.settings["epochs"] == 4
    assert method.layer_map == "uniform+emb"
    wr_triple = next(t for t in method.terms if t.name == "wr_triple")
    assert wr_triple.options == {"window": 21, "released_window_quirks": False}


def test_rte_trains_six_epochs_and_task_settings_can_be_switched_off():
    assert resolve("ckd", task="rte").settings["epochs"] == 6
    assert resolve("ckd", task="rte", use_task_settings=False).settings["epochs"] == 3


def test_ablations_drop_terms():
    names = lambda m: {t.name for t in resolve(m).terms}  # noqa: E731
    assert names("ckd-wr") == {"kd", "wr_pair", "wr_triple"}
    assert names("ckd-ltr") == {"kd", "ltr_pair", "ltr_triple"}
    assert names("ckd-pair") == {"kd", "wr_pair", "ltr_pair"}
    assert names("ckd-triple") == {"kd", "wr_triple", "ltr_triple"}
    assert names("ckd-ltr-triple") == {"kd", "ltr_triple"}
    assert resolve("ckd-wr").base == "ckd"


def test_full_triple_and_released_variants():
    full = next(t for t in resolve("ckd-full-triple").terms if t.name == "wr_triple")
    assert full.options["window"] is None
    released = resolve("ckd-released", task="sst2")
    weights = {t.name: t.weight for t in released.terms}
    assert "kd" not in weights and weights["kd_released"] == 1.0
    assert weights["ltr_pair"] == 1.0 and weights["ltr_triple"] == 1.0  # the command-line default, not the table
    assert weights["wr_pair"] == 100.0
    triple = next(t for t in released.terms if t.name == "wr_triple")
    assert triple.options["released_window_quirks"] is True


def test_method_options_override_and_typos_are_refused():
    method = resolve("ckd", options={"window": 5, "temperature": 2.0})
    assert next(t for t in method.terms if t.name == "wr_triple").options["window"] == 5
    assert method.settings["temperature"] == 2.0
    with pytest.raises(ConfigError, match="method_options.windw"):
        resolve("ckd", options={"windw": 5})


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown method 'ckdd'.*known methods: .*ckd"):
        resolve("ckdd")


def test_adding_a_method_is_one_yaml_entry(tmp_path):
    text = default_methods_file().read_text()
    text += "\n  ckd-wr-heavy:\n    extends: ckd-wr\n    settings: {wr_pair: 7.0}\n"
    path = tmp_path / "methods.yaml"
    path.write_text(text)
    method = resolve_method(load_methods(path), "ckd-wr-heavy", "rte", known_terms=set(TERMS))
    assert {t.name: t.weight for t in method.terms}["wr_pair"] == 7.0
    assert method.base == "ckd"


def test_unknown_term_and_bad_reference_are_refused(tmp_path):
    path = tmp_path / "methods.yaml"
    path.write_text("settings: {a: 1}\nmethods:\n  m1: {terms: {kd: {weight: nope}}}\n  m2: {terms: {wr_quad: {}}}\n")
    document = load_methods(path)
    with pytest.raises(ConfigError, match="'nope' is neither a number nor a known setting"):
        resolve_method(document, "m1", "rte", known_terms=set(TERMS))
    with pytest.raises(ConfigError, match="unknown loss term 'wr_quad'"):
        resolve_method(document, "m2", "rte", known_terms=set(TERMS))
