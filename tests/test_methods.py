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


def test_every_method_names_a_recipe_with_a_source():
    for name in DOC["methods"]:
        method = resolve(name)
        assert method.recipe is not None, name
        assert method.recipe["source"].strip(), name
        assert method.to_record()["recipe"] == method.recipe


def test_baselines_use_their_own_recipe_not_the_ckd_table():
    pkd = resolve("pkd", task="sst2")
    assert pkd.recipe["name"] == "pkd" and pkd.recipe["task"] is None
    assert {k: pkd.settings[k] for k in ("temperature", "alpha", "beta", "epochs")} == {
        "temperature": 10.0, "alpha": 0.5, "beta": 100.0, "epochs": 4}
    assert pkd.settings["lr"] == pytest.approx(5e-5)
    assert "wr_pair" not in pkd.settings  # CKD's weights are not settings of PKD
    stage1, stage2 = resolve("tinybert-intermediate", task="rte"), resolve("tinybert", task="rte")
    assert (stage1.settings["lr"], stage1.settings["epochs"]) == (pytest.approx(5e-5), 10)
    assert (stage2.settings["lr"], stage2.settings["epochs"], stage2.settings["temperature"]) == (pytest.approx(3e-5), 3, 1.0)
    for name in ("kd", "minilm", "distilbert-cos"):
        method = resolve(name, task="sst2")
        assert method.recipe["name"] == name and method.recipe["task"] is None
        assert method.settings["alpha"] == 0.5 and method.settings["epochs"] == 4, name
    ckd = resolve("ckd", task="sst2")
    assert ckd.recipe["name"] == "ckd" and ckd.recipe["task"] == "sst2" and ckd.recipe["values"]["alpha"] == 0.9


def test_the_record_shows_recipe_values_and_what_overrode_them():
    method = resolve("ckd-released", task="sst2", options={"temperature": 2.0})
    assert method.recipe["values"]["ltr_pair"] == 100 and method.settings["ltr_pair"] == 1.0  # the method's own setting
    assert method.recipe["values"]["temperature"] == 4 and method.settings["temperature"] == 2.0  # method_options
    off = resolve("ckd", task="sst2", use_task_settings=False)
    assert off.recipe["task"] is None and off.settings["alpha"] == 0.5


def test_pkd_rejects_ckd_settings_in_method_options():
    with pytest.raises(ConfigError, match="method_options.wr_pair: not a setting of method 'pkd'"):
        resolve("pkd", options={"wr_pair": 1.0})


@pytest.mark.parametrize("body, message", [
    ("settings: {}\ntask_settings: {rte: {alpha: 1}}\nmethods: {m: {terms: {kd: {}}}}\n", "task_settings' is no longer read"),
    ("settings: {}\nmethods: {m: {recipe: nope, terms: {kd: {}}}}\n", "names recipe 'nope', which recipes does not define"),
    ("settings: {}\nrecipes: {r: {settings: {lr: 1}}}\nmethods: {m: {recipe: r, terms: {kd: {}}}}\n", "recipes.r needs a `source:`"),
    ("settings: {}\nrecipes: {r: {source: x, task: {}}}\nmethods: {m: {recipe: r, terms: {kd: {}}}}\n", "recipes.r: unknown key 'task'"),
    ("settings: {}\nrecipes: {r: {source: x, tasks: {rte: 3}}}\nmethods: {m: {recipe: r, terms: {kd: {}}}}\n", "recipes.r.tasks must map"),
])
def test_bad_recipes_are_refused_with_one_line(tmp_path, body, message):
    path = tmp_path / "methods.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message) as error:
        load_methods(path)
    assert "\n" not in str(error.value)


def test_a_method_without_its_recipes_setting_fails_clearly():
    from types import SimpleNamespace

    import torch

    from ckd.objectives import Batch, Objective, Outputs

    document = {"_path": "m.yaml", "settings": {}, "recipes": {}, "methods": {"m": {"terms": {"kd": {}}}}}
    method = resolve_method(document, "m", "rte", known_terms=set(TERMS))
    config = SimpleNamespace(hidden_size=4, num_hidden_layers=1, num_attention_heads=1)
    objective = Objective(method, regression=False, teacher_config=config, student_config=config)
    logits = torch.zeros(2, 2)
    with pytest.raises(ConfigError, match="loss term 'kd' needs the setting 'alpha'"):
        objective(Batch(labels=torch.zeros(2, dtype=torch.long), attention_mask=torch.ones(2, 3)), Outputs(logits), Outputs(logits))


@pytest.mark.parametrize("key", ["pkd_released_reduction", "kd_class_mean", "tinybert_released_padding", "t2_scale"])
def test_switches_must_be_booleans(key):
    with pytest.raises(ConfigError, match=f"method_options.{key} is a switch and must be true or false, got 'no'"):
        resolve("pkd", options={key: "no"})


def test_workflow_logit_terms_are_the_objectives_logit_only_terms():
    """workflow/rules/common.smk lists the logit-only terms (to keep torch out of the DAG's parse);
    the list must be what ckd.objectives.TERMS says."""
    import re

    from ckd.objectives import TERMS
    from tests.conftest import REPO

    text = (REPO / "workflow/rules/common.smk").read_text()
    listed = set(re.findall(r'"(\w+)"', re.search(r"^LOGIT_TERMS = \{(.*?)\}", text, re.M | re.S).group(1)))
    assert listed == {name for name, kind in TERMS.items() if not (kind.hidden or kind.capture)}
