import pytest

from ckd.errors import ConfigError, ModelError
from ckd.layer_maps import LAYER_MAPS, layer_map, tinybert_attention_pairs


def split(m):
    return list(m.teacher_indices), list(m.student_indices)


def test_names():
    assert LAYER_MAPS == ("uniform+emb", "pkd-skip", "pkd-last", "tinybert")


@pytest.mark.parametrize(
    "lt, ls, teacher, student",
    [
        (12, 6, [0, 2, 4, 6, 8, 10, 12], [0, 1, 2, 3, 4, 5, 6]),
        (12, 4, [0, 3, 6, 9, 12], [0, 1, 2, 3, 4]),
        (12, 8, [0, 3, 6, 9, 12], [0, 2, 4, 6, 8]),
        (6, 3, [0, 2, 4, 6], [0, 1, 2, 3]),
        (12, 12, list(range(13)), list(range(13))),
        (12, 5, [0, 12], [0, 5]),
    ],
)
def test_uniform_emb(lt, ls, teacher, student):
    assert split(layer_map("uniform+emb", lt, ls)) == (teacher, student)


@pytest.mark.parametrize(
    "lt, ls, teacher, student",
    [
        (12, 6, [2, 4, 6, 8, 10], [1, 2, 3, 4, 5]),
        (12, 4, [3, 6, 9], [1, 2, 3]),
        (12, 8, [1, 3, 4, 6, 7, 9, 10], [1, 2, 3, 4, 5, 6, 7]),  # floor(j * 12 / 8)
        (6, 3, [2, 4], [1, 2]),
    ],
)
def test_pkd_skip(lt, ls, teacher, student):
    assert split(layer_map("pkd-skip", lt, ls)) == (teacher, student)


@pytest.mark.parametrize(
    "lt, ls, teacher, student",
    [
        (12, 6, [7, 8, 9, 10, 11], [1, 2, 3, 4, 5]),
        (12, 4, [9, 10, 11], [1, 2, 3]),
        (12, 8, [5, 6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6, 7]),
        (6, 3, [4, 5], [1, 2]),
    ],
)
def test_pkd_last(lt, ls, teacher, student):
    assert split(layer_map("pkd-last", lt, ls)) == (teacher, student)


@pytest.mark.parametrize(
    "lt, ls, teacher, student, attention",
    [
        (12, 6, [0, 2, 4, 6, 8, 10, 12], [0, 1, 2, 3, 4, 5, 6], [(1, 0), (3, 1), (5, 2), (7, 3), (9, 4), (11, 5)]),
        (12, 4, [0, 3, 6, 9, 12], [0, 1, 2, 3, 4], [(2, 0), (5, 1), (8, 2), (11, 3)]),
        (
            12, 8, [0, 1, 3, 4, 6, 7, 9, 10, 12], list(range(9)),
            [(0, 0), (2, 1), (3, 2), (5, 3), (6, 4), (8, 5), (9, 6), (11, 7)],
        ),
        (6, 3, [0, 2, 4, 6], [0, 1, 2, 3], [(1, 0), (3, 1), (5, 2)]),
    ],
)
def test_tinybert(lt, ls, teacher, student, attention):
    m = layer_map("tinybert", lt, ls)
    assert split(m) == (teacher, student)
    assert list(m.attention_pairs) == attention
    assert tinybert_attention_pairs(lt, ls) == m.attention_pairs


def test_non_tinybert_maps_have_no_attention_pairs():
    assert layer_map("uniform+emb", 12, 6).attention_pairs == ()


def test_record():
    m = layer_map("uniform+emb", 12, 4)
    assert m.to_record() == {"name": "uniform+emb", "pairs": [[0, 0], [3, 1], [6, 2], [9, 3], [12, 4]]}


def test_select():
    m = layer_map("pkd-skip", 4, 2)
    teacher = [f"t{i}" for i in range(5)]
    student = [f"s{i}" for i in range(3)]
    assert m.select(teacher, student) == (["t2"], ["s1"])
    with pytest.raises(ModelError, match="4-layer teacher"):
        m.select(teacher[:-1], student)


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError, match="uniform\\+emb, pkd-skip, pkd-last, tinybert"):
        layer_map("uniform", 12, 6)


@pytest.mark.parametrize("name", ["pkd-skip", "pkd-last", "tinybert"])
def test_student_deeper_than_teacher(name):
    with pytest.raises(ConfigError, match="deeper"):
        layer_map(name, 6, 12)


def test_uniform_handles_deeper_student():
    assert split(layer_map("uniform+emb", 6, 12)) == ([0, 1, 2, 3, 4, 5, 6], [0, 2, 4, 6, 8, 10, 12])


@pytest.mark.parametrize("name", LAYER_MAPS)
@pytest.mark.parametrize("lt, ls", [(0, 6), (12, 0), (12, -1)])
def test_zero_layers(name, lt, ls):
    with pytest.raises(ConfigError, match="at least one layer"):
        layer_map(name, lt, ls)


@pytest.mark.parametrize("name", ["pkd-skip", "pkd-last"])
def test_one_layer_student_has_no_pkd_pairs(name):
    with pytest.raises(ConfigError, match="maps no layers"):
        layer_map(name, 12, 1)
