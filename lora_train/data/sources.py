"""Sources: where rows come from, one at a time, each with the place it came from for reports.

`data.source` is the bundled sample, a local file (.jsonl, .json, .parquet, .csv), a glob of such files, a folder of
them, or a Hub dataset id (with `data.revision` and `data.split`). Local files are read by our own small readers
rather than `datasets.load_dataset`, because a skipped row must be reported where it is and one bad row must not
abort the whole file. Every reader is a generator, so nothing here holds more than one row (or one Parquet batch).

A row's place names it uniquely: `file:line` in line-based files (JSON lines; CSV, the line where the row starts),
`file[index]` in record-based ones (the element of a JSON array, the row of a Parquet file, the row of a Hub split;
counted from 0, as `jq '.[index]'`, pandas' iloc and datasets index them).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lora_train.errors import UserError, hub_errors
from lora_train.schemas import LIST_DATA, SAMPLE_DATA, DataConfig

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class Bad:
    """A row that could not be read (bad JSON, bad UTF-8, too large, not the format its extension says)."""

    reason: str


# Data bundled with the package, by the name a user gives as data.source.
BUNDLED = {SAMPLE_DATA: "sample.jsonl", LIST_DATA: "lists.jsonl"}


def resolve_source(source: str) -> str:
    """A bundled file's path, or the source unchanged."""
    if source in BUNDLED:
        return str(Path(__file__).parent / "files" / BUNDLED[source])
    return source


def _has_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def is_local(source: str) -> bool:
    """A Hub id looks like `org/name`; a path with an extension, a glob, a leading ./ / ~ or that exists is local."""
    return (
        os.path.exists(os.path.expanduser(source))
        or source.startswith((".", "/", "~"))
        or _has_glob(source)
        or Path(source).suffix.lower() in EXTENSIONS
        or source.count("/") != 1
    )


def local_files(cfg: DataConfig) -> list[Path]:
    """The files a local source names, sorted, so that file:line positions and row order are reproducible."""
    source = os.path.expanduser(resolve_source(cfg.source))
    if _has_glob(source):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        files = [f for f in files if f.suffix.lower() in EXTENSIONS]
        if not files:
            raise UserError(f"data.source={cfg.source!r}: the pattern matches no {'/'.join(EXTENSIONS)} file")
        return files
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise UserError(f"data.source={cfg.source!r}: the folder holds no {'/'.join(EXTENSIONS)} file")
        return files
    if not path.is_file():
        raise UserError(f"data.source={cfg.source!r}: no such file or folder ({path.resolve()})")
    if path.suffix.lower() not in EXTENSIONS:
        raise UserError(f"data.source={cfg.source!r}: unsupported file type {path.suffix or '(none)'!r}; "
                        f"use {', '.join(EXTENSIONS)}")
    return [path]


def check_source(cfg: DataConfig) -> str:
    """Fail fast, before any model loads, when a local data source does not exist; returns the resolved source."""
    source = resolve_source(cfg.source)
    if is_local(source):
        local_files(cfg)
    return source


def _jsonl(path: Path, limit: int) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        n = 0
        while True:
            raw = f.readline(limit + 1)  # bounded: an enormous line is never loaded whole
            if not raw:
                return
            n += 1
            where = f"{path}:{n}"
            if len(raw) > limit and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(1 << 20)
                yield where, Bad(f"row larger than data.max_row_bytes={limit}")
                continue
            if not raw.strip():
                continue
            yield where, _parse_json(raw)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Bad(f"not UTF-8 ({e.reason} at byte {e.start})")
    except json.JSONDecodeError as e:
        return Bad(f"malformed JSON ({e.msg} at column {e.colno})")


def _json(path: Path, limit: int) -> Iterator[tuple[str, Any]]:
    """A JSON array of objects (each located by its element index: a whole array often sits on one line); anything
    else is read as JSON lines, which is what `datasets` also accepts under a .json name."""
    data = path.read_bytes()
    if not data.lstrip().startswith(b"["):
        yield from _jsonl(path, limit)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        yield f"{path}:{line}", Bad(f"not UTF-8 ({e.reason}); file skipped")
        return
    decoder = json.JSONDecoder()
    pos, index = text.index("[") + 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:  # the parser's line: where to look in an editor
            yield f"{path}:{e.lineno}", Bad(f"malformed JSON ({e.msg} at column {e.colno}, in element {index}); "
                                            f"rest of the file skipped")
            return
        yield f"{path}[{index}]", item if end - pos <= limit else Bad(f"row larger than data.max_row_bytes={limit}")
        pos, index = end, index + 1


def _parquet(path: Path, limit: int) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as e:  # not Parquet at all (e.g. a CSV renamed): one counted skip, not a crash
        yield f"{path}", Bad(f"not a Parquet file ({str(e).splitlines()[0]}); file skipped")
        return
    n = 0  # Parquet has no lines: a row is located by its index
    for group in range(pf.num_row_groups):  # one group at a time, so damage is located to its group
        batches = pf.iter_batches(batch_size=1024, row_groups=[group])
        while True:
            try:
                batch = next(batches, None)
                rows = [] if batch is None else batch.to_pylist()
            except (pa.ArrowException, OSError, ValueError) as e:  # a damaged page, found only when its batch is read: the rows before it stay
                yield f"{path}[{n}]", Bad(f"corrupt Parquet data in row group {group}, from this row on "
                                          f"({str(e).splitlines()[0]}); rest of the file skipped")
                return
            if batch is None:
                break
            for row in rows:
                yield f"{path}[{n}]", row
                n += 1


def _csv(path: Path, limit: int) -> Iterator[tuple[str, Any]]:
    csv.field_size_limit(max(limit, 1024))
    # surrogateescape: a row with bytes that are not UTF-8 is reported and skipped, the rest of the file still reads
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        start = 2  # the line after the header
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield f"{path}:{start}", Bad(f"malformed CSV ({e})")
                start = reader.line_num + 1
                continue
            where, start = f"{path}:{start}", reader.line_num + 1
            if None in row:
                yield where, Bad("more fields than the header has columns")
            elif any("\udc80" <= c <= "\udcff" for v in row.values() if isinstance(v, str) for c in v):
                yield where, Bad("not UTF-8")
            else:
                yield where, row


READERS = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet, ".csv": _csv}


def _hub(cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    import datasets
    import datasets.exceptions

    try:
        ds = datasets.load_dataset(cfg.source, revision=cfg.revision, split=cfg.split, streaming=cfg.streaming)
    except (*hub_errors(), datasets.exceptions.DatasetsError) as e:  # network, unknown id, revision or split
        raise UserError(f"data.source={cfg.source!r} (revision {cfg.revision!r}, split {cfg.split!r}): "
                        f"could not load: {e}") from e
    for n, row in enumerate(ds):
        yield f"{cfg.source}@{cfg.revision or 'main'}[{n}]", row


def iter_rows(cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    """(where, row or Bad) for every row of the source, in a reproducible order, at most data.max_rows of them."""
    source = check_source(cfg)
    if is_local(source):
        items = (item for f in local_files(cfg) for item in READERS[f.suffix.lower()](f, cfg.max_row_bytes))
    else:
        items = _hub(cfg)
    bundled = resolve_source(cfg.source) if cfg.source in BUNDLED else None
    for n, (where, row) in enumerate(items):
        if cfg.max_rows is not None and n >= cfg.max_rows:
            return
        # Bundled data is named as the user named it, not by where the package happens to be installed.
        yield (where.replace(bundled, cfg.source) if bundled else where), row
