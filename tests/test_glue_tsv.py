from collections import Counter

import pytest

from ckd.data.glue_tsv import glue_split_path, read_glue_split, read_glue_tsv
from ckd.data.tasks import get_task
from ckd.errors import DataError

# ---- the real GLUE files in $GLUE_DIR -------------------------------------------------------------

REAL_COUNTS = [
    ("cola", "train", 8551), ("cola", "dev", 1043), ("sst2", "train", 67349), ("sst2", "dev", 872),
    ("mrpc", "train", 3668), ("mrpc", "dev", 408), ("stsb", "train", 5749), ("stsb", "dev", 1500),
    ("rte", "train", 2490), ("rte", "dev", 277), ("wnli", "train", 635), ("wnli", "dev", 71),
    ("qnli", "dev", 5463),
]


@pytest.mark.parametrize("task, split, count", REAL_COUNTS)
def test_real_split_sizes(glue_dir, task, split, count):
    examples = read_glue_split(task, split, glue_dir)
    assert len(examples) == count
    spec = get_task(task)
    for ex in examples:
        assert ex.text_a.strip()
        assert (ex.text_b is not None) == spec.is_pair
        if spec.is_pair:
            assert ex.text_b.strip()
        if not spec.is_regression:
            assert ex.label in range(spec.num_labels)


@pytest.mark.parametrize("task, split, label_name, count", [
    ("mrpc", "dev", "equivalent", 279), ("mrpc", "dev", "not_equivalent", 129),
    ("mrpc", "train", "equivalent", 2474), ("rte", "train", "entailment", 1249),
    ("sst2", "train", "positive", 37569), ("sst2", "train", "negative", 29780),
    ("cola", "train", "acceptable", 6023), ("cola", "train", "unacceptable", 2528),
    ("qnli", "dev", "entailment", 2702), ("wnli", "train", "entailment", 312),
])
def test_real_label_balance(glue_dir, task, split, label_name, count):
    spec = get_task(task)
    labels = Counter(ex.label for ex in read_glue_split(task, split, glue_dir))
    assert labels[spec.label_index(label_name)] == count


def test_real_stsb_scores(glue_dir):
    for split in ("train", "dev"):
        scores = [ex.label for ex in read_glue_split("stsb", split, glue_dir)]
        assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in scores)
        assert min(scores) == 0.0 and max(scores) == 5.0
    first = read_glue_split("stsb", "train", glue_dir)[0]
    assert first.label == 5.0 and first.guid == "STS-B/train.tsv:2"


def test_real_guids_and_headerless_cola(glue_dir):
    cola = read_glue_split("cola", "dev", glue_dir)
    # no header: the first example is line 1; the last line has no trailing newline
    assert cola[0].guid == "CoLA/dev.tsv:1" and cola[-1].guid == "CoLA/dev.tsv:1043"
    mrpc = read_glue_split("mrpc", "train", glue_dir)
    assert mrpc[0].guid == "MRPC/train.tsv:2"  # BOM header skipped, not read as a row
    # bare quotes stay inside their own cells (quoting off): no row swallowed another
    assert all("\t" not in ex.text_a and "\n" not in ex.text_a for ex in mrpc)
    assert any(ex.text_a.count('"') % 2 == 1 for ex in mrpc)


def test_real_missing_split_names_expected_path(glue_dir):
    # QNLI train.tsv is not part of the local copy: a clear error, not a crash
    with pytest.raises(DataError, match=r"QNLI/train\.tsv.*GLUE_DIR"):
        read_glue_split("qnli", "train", glue_dir)


# ---- hand-made fixture files ----------------------------------------------------------------------

MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
               "label5\tgold_label\n")


def _mnli_row(i, premise, hypothesis, gold, annotator="neutral"):
    parses = "\t".join(["( x )"] * 4)
    return f"{i}\t{i}\t{i}n\tfiction\t{parses}\t{premise}\t{hypothesis}\t{annotator}\t\t\t\t\t{gold}\n"


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_mnli_labels_map_by_name_in_official_order(tmp_path):
    # the file's first label is contradiction: indices must still follow the official order
    rows = [("The dog slept all day.", "The dog ran all day.", "contradiction"),
            ("The dog slept all day.", "An animal rested.", "entailment"),
            ("The dog slept all day.", "The dog was tired.", "neutral"),
            ("Someone typed null.", "NA", "entailment")]
    text = MNLI_HEADER + "".join(_mnli_row(i, *row) for i, row in enumerate(rows))
    _write(tmp_path / "MNLI" / "dev_matched.tsv", text)
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", MNLI_HEADER + _mnli_row(0, "A b c.", "A b.", "neutral"))
    examples = read_glue_split("mnli", "dev_matched", tmp_path)
    assert [ex.label for ex in examples] == [2, 0, 1, 0]
    assert get_task("mnli").labels[examples[0].label] == "contradiction"
    assert (examples[1].text_a, examples[1].text_b) == ("The dog slept all day.", "An animal rested.")
    assert examples[3].text_b == "NA"  # kept as text, not turned into a missing value
    assert examples[0].guid == "MNLI/dev_matched.tsv:2"
    assert [ex.label for ex in read_glue_split("mnli", "dev_mismatched", tmp_path)] == [1]


def test_qqp_fixture(tmp_path):
    text = ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
            "1\t11\t12\tHow do I say \"hi?\tHow to say \"hello\" well?\t0\n"
            "2\t13\t14\tIs null a word?\tWhat does null mean?\t1\n")
    _write(tmp_path / "QQP" / "train.tsv", text)
    examples = read_glue_split("qqp", "train", tmp_path)
    assert [ex.label for ex in examples] == [0, 1]
    assert examples[0].text_a == 'How do I say "hi?'  # an unbalanced quote does not swallow the next row
    assert examples[1].text_a == "Is null a word?"
    assert get_task("qqp").labels[1] == "duplicate"


def test_mrpc_bom_header_and_windows_line_endings(tmp_path):
    text = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\tA cat sat .\tThe cat sat .\r\n\n"
    path = _write(tmp_path / "MRPC" / "dev.tsv", text)
    [example] = read_glue_tsv(path, "mrpc")
    assert (example.text_a, example.text_b, example.label) == ("A cat sat .", "The cat sat .", 1)


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize("body, line, message", [
    ("0\tA man sleeps.\tA man rests.\tentailment\n1\tOnly two columns\n", 3, r"expected 4 .*columns, found 2"),
    ("0\tA man sleeps.\tA man rests.\tentailed\n", 2, r"label 'entailed' is not one of entailment, not_entailment"),
    ("0\tA man sleeps.\t  \tentailment\n", 2, r"empty text in column 'sentence2'"),
])
def test_malformed_rte_rows(tmp_path, body, line, message):
    _write(tmp_path / "RTE" / "train.tsv", RTE_HEADER + body)
    with pytest.raises(DataError, match=rf"RTE/train\.tsv: line {line}: {message}"):
        read_glue_split("rte", "train", tmp_path)


def test_numeric_label_outside_label_set(tmp_path):
    path = _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood film\t1\nbad film\t2\n")
    with pytest.raises(DataError, match=r"SST-2/dev\.tsv: line 3: label '2' is not one of 0, 1"):
        read_glue_tsv(path, "sst2")


@pytest.mark.parametrize("score", ["abc", "7.5", "nan", ""])
def test_bad_stsb_score(tmp_path, score):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tg\tf\t2012\t0001\tnone\tnone\tA cat.\tA dog.\t{}\n"
    path = _write(tmp_path / "STS-B" / "dev.tsv", header + row.format("2.5") + row.format(score))
    with pytest.raises(DataError, match=rf"STS-B/dev\.tsv: line 3: score '{score}' is not a number in \[0, 5\]"):
        read_glue_tsv(path, "stsb")


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "CoLA" / "train.tsv"
    path.parent.mkdir()
    path.write_bytes(b"gj04\t1\t\tFine sentence.\ngj04\t0\t*\tBad \xff byte.\n")
    with pytest.raises(DataError, match=r"CoLA/train\.tsv: line 2: bytes are not valid UTF-8"):
        read_glue_split("cola", "train", tmp_path)


def test_header_without_expected_columns(tmp_path):
    path = _write(tmp_path / "RTE" / "dev.tsv", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"RTE/dev\.tsv: line 1: header lacks column\(s\) 'sentence1', 'sentence2'"):
        read_glue_tsv(path, "rte")


@pytest.mark.parametrize("text", ["", RTE_HEADER, RTE_HEADER + "\n"])
def test_empty_split_is_an_error(tmp_path, text):
    _write(tmp_path / "RTE" / "dev.tsv", text)
    with pytest.raises(DataError, match=r"RTE/dev\.tsv: no examples"):
        read_glue_split("rte", "dev", tmp_path)


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(DataError, match=rf"GLUE file not found: {tmp_path}/RTE/dev\.tsv.*set GLUE_DIR"):
        glue_split_path("rte", "dev", tmp_path)
    with pytest.raises(DataError, match=r"task rte has no split 'dev_matched'; use one of train, dev"):
        glue_split_path("rte", "dev_matched", tmp_path)
    with pytest.raises(DataError, match=r"synthetic"):
        glue_split_path("syn-pair", "dev", tmp_path)
