"""Corpus sources: a corpus spec as data, streamed as documents (lists of sentences), with a stamp per source.

A corpus spec is a mapping `{sources: [source, ...], max_documents: N | null}`; each source is one of

    {glue: [sst2, qnli, ...]}                  the GLUE *training* sentences under $GLUE_DIR (or `glue_dir:`),
                                               labels dropped; one document per example (its one or two texts).
                                               In-domain text for the tasks, NOT the paper's corpus
                                               (Wikipedia + BookCorpus)
    {synthetic: [syn-sentiment, ...], size: 2000, seed: 0}
                                               the synthetic generator's training texts (ckd.data.synthetic),
                                               one document per example; offline, for tests and the smoke study
    {files: PATH, text_field: text, docs: line | blank}
                                               a .txt, .txt.gz or .jsonl file, or a folder of them (sorted, not
                                               recursive). .txt: `docs: line` one document per line (default),
                                               `docs: blank` blank-line separated documents, one paragraph per
                                               line. .jsonl: one document per line, its text in `text_field`
    {hub: ID, config: NAME, split: train, text_field: text, max_documents: N, rows_per_document: 1}
                                               a Hugging Face dataset, streamed (`datasets` is imported only here,
                                               only when such a source is read); e.g. wikimedia/wikipedia
                                               20231101.en (one article per row). A dataset of one sentence per
                                               row without document ids (BookCorpus) can group `rows_per_document`
                                               consecutive rows into one document

Within a document, each line (paragraph) is split into sentences at `.`, `!` or `?` followed by white
space: the unit the packer never cuts unless a sentence alone is longer than a sequence.

Stamps (`source_stamps`) are what the pack's fingerprint covers: files by name, size and mtime; GLUE files
likewise; synthetic sources by their parameters; hub sources by id, config, split and the revision the
prefetch manifest pins (None: whatever the hub serves, said in the manifest). Errors are one-line CorpusError.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ckd.errors import ConfigError, refuse_unknown_keys

SOURCE_KINDS = ("glue", "synthetic", "files", "hub")
SOURCE_KEYS = {
    "glue": {"glue", "glue_dir"},
    "synthetic": {"synthetic", "size", "seed"},
    "files": {"files", "text_field", "docs"},
    "hub": {"hub", "config", "split", "text_field", "max_documents", "rows_per_document"},
}
SPEC_KEYS = {"sources", "max_documents"}
FILE_SUFFIXES = (".txt", ".txt.gz", ".jsonl")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

Document = list  # list[str]: the document's sentences, in order


class CorpusError(ConfigError):
    """A corpus spec or source is invalid or unreadable."""


def check_spec(spec: Any, where: str = "corpus") -> dict[str, Any]:
    """The spec with defaults filled, or a CorpusError naming `where` and the offending key."""
    if not isinstance(spec, Mapping):
        raise CorpusError(f"{where} must be a mapping with `sources: [...]`, got {spec!r}")
    refuse_unknown_keys(where, spec, SPEC_KEYS, CorpusError)
    sources = spec.get("sources")
    if not isinstance(sources, list) or not sources:
        raise CorpusError(f"{where}.sources must be a non-empty list of sources ({', '.join(SOURCE_KINDS)})")
    limit = spec.get("max_documents")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise CorpusError(f"{where}.max_documents must be a positive integer or null, got {limit!r}")
    return {"sources": [_check_source(s, f"{where}.sources[{i}]") for i, s in enumerate(sources)], "max_documents": limit}


def source_kind(source: Mapping[str, Any]) -> str:
    return next(kind for kind in SOURCE_KINDS if kind in source)


def _check_source(source: Any, where: str) -> dict[str, Any]:
    if not isinstance(source, Mapping):
        raise CorpusError(f"{where} must be a mapping such as {{files: corpus.txt}}, got {source!r}")
    kinds = [k for k in SOURCE_KINDS if k in source]
    if len(kinds) != 1:
        raise CorpusError(f"{where} must have exactly one of the keys {', '.join(SOURCE_KINDS)}, got {sorted(source)}")
    kind = kinds[0]
    refuse_unknown_keys(where, source, SOURCE_KEYS[kind], CorpusError, kind=f"{kind} source")
    source = dict(source)
    if kind in ("glue", "synthetic"):
        tasks = source[kind]
        tasks = [tasks] if isinstance(tasks, str) else tasks
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise CorpusError(f"{where}.{kind} must be a task name or a list of task names, got {source[kind]!r}")
        from ckd.data.tasks import get_task

        try:
            names = [get_task(t).name for t in tasks]
        except ConfigError:
            raise
        except Exception as exc:  # DataError: unknown task
            raise CorpusError(f"{where}.{kind}: {exc}") from None
        synthetic = [n for n in names if n.startswith("syn-")]
        if kind == "glue" and synthetic:
            raise CorpusError(f"{where}.glue: {synthetic[0]} is synthetic; list it under `synthetic:` instead")
        if kind == "synthetic" and len(synthetic) != len(names):
            raise CorpusError(f"{where}.synthetic: {next(n for n in names if n not in synthetic)} is not synthetic; list it under `glue:`")
        source[kind] = names
        if kind == "synthetic":
            source.setdefault("size", 2000)
            source.setdefault("seed", 0)
            for key in ("size", "seed"):
                value = source[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "size" else 0):
                    raise CorpusError(f"{where}.{key} must be an integer >= {1 if key == 'size' else 0}, got {value!r}")
    elif kind == "files":
        if not isinstance(source["files"], str) or not source["files"]:
            raise CorpusError(f"{where}.files must be a path to a file or folder, got {source['files']!r}")
        source.setdefault("docs", "line")
        source.setdefault("text_field", "text")
        if source["docs"] not in ("line", "blank"):
            raise CorpusError(f"{where}.docs must be line (one document per line) or blank (blank-line separated), got {source['docs']!r}")
    else:
        if not isinstance(source["hub"], str) or not source["hub"]:
            raise CorpusError(f"{where}.hub must be a dataset id such as wikimedia/wikipedia, got {source['hub']!r}")
        source.setdefault("config", None)
        source.setdefault("split", "train")
        source.setdefault("text_field", "text")
        source.setdefault("max_documents", None)
        source.setdefault("rows_per_document", 1)
        for key in ("max_documents", "rows_per_document"):
            value = source[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CorpusError(f"{where}.{key} must be a positive integer, got {value!r}")
    return source


# ------------------------------------------------------------------ files


def source_files(source: Mapping[str, Any]) -> list[Path]:
    """The text files of a `files` source: the file itself, or the .txt/.txt.gz/.jsonl files of the folder."""
    path = Path(source["files"]).expanduser()
    if path.is_file():
        if not path.name.endswith(FILE_SUFFIXES):
            raise CorpusError(f"corpus file {path} is not .txt, .txt.gz or .jsonl: rename it or convert it")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(FILE_SUFFIXES))
        if not files:
            raise CorpusError(f"corpus folder {path} holds no .txt, .txt.gz or .jsonl file")
        return files
    raise CorpusError(f"corpus path {path} does not exist: check `files:` in the corpus spec")


def glue_files(source: Mapping[str, Any]) -> list[Path]:
    from ckd.data.glue_tsv import glue_split_path

    glue_dir = source.get("glue_dir") or os.environ.get("GLUE_DIR")
    if not glue_dir:
        raise CorpusError("a glue corpus source needs GLUE_DIR set (or `glue_dir:` in the source): the folder with <TASK>/train.tsv")
    try:
        return [glue_split_path(task, "train", glue_dir) for task in source["glue"]]
    except Exception as exc:
        raise CorpusError(f"corpus glue source: {exc}") from None


def _stamp(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def source_stamps(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What each source is, now: file stamps [path, size, mtime_ns], generator parameters, hub revision."""
    stamps = []
    for source in spec["sources"]:
        kind = source_kind(source)
        if kind == "files":
            stamps.append({"files": [_stamp(p) for p in source_files(source)]})
        elif kind == "glue":
            stamps.append({"glue": [_stamp(p) for p in glue_files(source)]})
        elif kind == "synthetic":
            from ckd.data import synthetic

            stamps.append({"synthetic": source["synthetic"], "size": source["size"], "seed": source["seed"],
                           "generator": _module_digest(synthetic)})
        else:
            from ckd.prefetch import pinned_revision

            stamps.append({"hub": source["hub"], "config": source["config"], "split": source["split"],
                           "revision": pinned_revision(source["hub"], "dataset")})
    return stamps


def _module_digest(module) -> str:
    import hashlib
    import inspect

    return hashlib.sha256(inspect.getsource(module).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------ documents


def split_sentences(paragraph: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_END.split(paragraph)) if s]


def text_document(text: str) -> Document:
    """A document from a text with one paragraph per line: its sentences, in order."""
    return [s for line in text.splitlines() for s in split_sentences(line)]


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="strict")
    return open(path, encoding="utf-8", errors="strict")


def _file_documents(path: Path, source: Mapping[str, Any]) -> Iterator[Document]:
    jsonl = path.name.endswith(".jsonl")
    field = source["text_field"]
    lineno = 0
    try:
        with _open_text(path) as handle:
            if source["docs"] == "blank" and not jsonl:
                paragraphs: list[str] = []
                for lineno, line in enumerate(handle, 1):  # noqa: B007 (lineno: the UnicodeDecodeError message)
                    if line.strip():
                        paragraphs.append(line)
                    elif paragraphs:
                        yield text_document("".join(paragraphs))
                        paragraphs = []
                if paragraphs:
                    yield text_document("".join(paragraphs))
                return
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if jsonl:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        raise CorpusError(f"{path}:{lineno}: not a JSON object; each .jsonl line must be one object") from None
                    text = row.get(field) if isinstance(row, dict) else None
                    if not isinstance(text, str):
                        keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                        raise CorpusError(f"{path}:{lineno}: no text field {field!r} (has {keys}); set text_field: in the source")
                    document = text_document(text)
                else:
                    document = split_sentences(line)
                if document:
                    yield document
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}:{lineno + 1}: not UTF-8 text ({exc.reason}); convert the file to UTF-8") from None
    except (OSError, EOFError) as exc:
        raise CorpusError(f"cannot read corpus file {path} ({exc}); check the file (a truncated .gz?)") from None


def _examples_documents(examples) -> Iterator[Document]:
    for example in examples:
        document = [t for t in (example.text_a, example.text_b) if t and t.strip()]
        if document:
            yield document


def _hub_documents(source: Mapping[str, Any]) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise CorpusError("a hub corpus source needs the 'datasets' package: pip install datasets") from None
    from ckd.prefetch import pinned_revision, pinned_snapshot

    # a dataset the prefetch manifest pins is read from its snapshot; any other is streamed from the hub
    reference = (pinned_snapshot(source["hub"], "dataset") if pinned_revision(source["hub"], "dataset") else None) or source["hub"]
    try:
        stream = datasets.load_dataset(reference, source["config"], split=source["split"], streaming=True)
    except Exception as exc:  # offline, unknown id or config: all mean "not available here"
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CorpusError(
            f"cannot stream hub dataset {source['hub']} config {source['config']!r} split {source['split']!r} "
            f"({type(exc).__name__}: {reason}); check the id and network access, or use a `files:` source"
        ) from None
    count, group, rows = 0, int(source["rows_per_document"]), []
    for row in stream:
        text = row.get(source["text_field"])
        if not isinstance(text, str):
            raise CorpusError(f"hub dataset {source['hub']} has no text field {source['text_field']!r} (has {', '.join(sorted(row))}); set text_field:")
        rows.append(text)
        if len(rows) < group:
            continue
        document = text_document("\n".join(rows))
        rows = []
        if document:
            yield document
            count += 1
            if source["max_documents"] and count >= source["max_documents"]:
                return
    if rows and (document := text_document("\n".join(rows))):
        yield document


def documents(spec: Mapping[str, Any]) -> Iterator[Document]:
    """Every document of the corpus, source by source, in order; at most `max_documents`. Streams: one
    document (or one GLUE/synthetic split's examples) in memory at a time."""
    count, limit = 0, spec.get("max_documents")
    for source in spec["sources"]:
        kind = source_kind(source)
        if kind == "files":
            stream = (d for path in source_files(source) for d in _file_documents(path, source))
        elif kind == "glue":
            from ckd.data.glue_tsv import read_glue_tsv

            stream = (d for task, path in zip(source["glue"], glue_files(source)) for d in _examples_documents(read_glue_tsv(path, task)))
        elif kind == "synthetic":
            from ckd.data.synthetic import generate_split

            stream = (d for task in source["synthetic"]
                      for d in _examples_documents(generate_split(task, "train", size=source["size"], seed=source["seed"])))
        else:
            stream = _hub_documents(source)
        for document in stream:
            yield document
            count += 1
            if limit and count >= limit:
                return
