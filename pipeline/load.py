"""Loading: any fsspec URL (files, directories, globs) of CSV or Parquet into a dask DataFrame.

Three steps, each cheap before the next is run:

1. :func:`find_files` lists the files (and fingerprints them from their listing: name, size,
   ETag/mtime), without reading data;
2. :func:`read_headers` reads every file's header (Parquet footers, CSV first lines) in a thread
   pool and :func:`check_headers` checks them against the job's schema contract, so a bad file
   is named before any compute;
3. :func:`read` builds the lazy dask DataFrame with the contract's dtypes, and
   :func:`summarize` computes everything the later stages need to know about it (rows, missing
   values, classes, levels of categorical columns) in ONE ``dask.compute``, rejecting data no
   model should be trained on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import did_you_mean

if TYPE_CHECKING:
    from pipeline.config import JobSpec

logger = logging.getLogger(__name__)

PARQUET_EXT = (".parquet", ".parq", ".pq")
CSV_EXT = (".csv", ".tsv", ".txt", ".csv.gz", ".csv.bz2", ".csv.zst", ".csv.xz", ".tsv.gz")

#: more distinct target values than this in a classification task is almost surely a mistake.
MAX_CLASSES = 1000


class DataError(ValueError):
    """Data that cannot be used. The message names the file, column or row and what to do."""


@dataclass(frozen=True)
class Source:
    """The files behind one data URL."""

    url: str
    protocol: str
    format: str  # "csv" | "parquet"
    files: tuple[str, ...]  # full URLs, in a stable order
    fingerprint: str
    bytes: int
    fs: Any = field(repr=False, compare=False)


def find_files(url: str, storage_options: Mapping[str, Any] | None = None,
               fmt: str = "auto") -> Source:
    """List the data files at ``url`` (a file, a directory or a glob) without reading them.

    Files whose names start with ``_`` or ``.`` (``_SUCCESS``, ``_metadata``) are skipped.

    Examples
    --------
    >>> src = find_files("data/demo")                  # doctest: +SKIP
    >>> src.format, len(src.files)                     # doctest: +SKIP
    ('parquet', 16)
    """
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(url, **dict(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise DataError(f"cannot open {url}: {exc}") from None
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    try:
        if any(ch in path for ch in "*?["):
            listing = fs.glob(path, detail=True)
        elif fs.isdir(path):
            listing = fs.find(path, detail=True)
        elif fs.exists(path):
            listing = {path: fs.info(path)}
        else:
            listing = {}
    except (PermissionError, OSError) as exc:
        raise DataError(f"cannot list {url}: {exc}. Check the URL and the credentials "
                        "(environment / fsspec config)") from None
    entries = {name: info for name, info in listing.items()
               if info.get("type", "file") != "directory"
               and not name.rsplit("/", 1)[-1].startswith(("_", "."))}
    if not entries:
        raise DataError(f"no data files at {url}; expected a CSV or Parquet file, a directory "
                        "of them, or a glob such as s3://bucket/prefix/*.parquet")
    names = sorted(entries)
    if fmt == "auto":
        fmt = _format_of(names, url)
    wanted = PARQUET_EXT if fmt == "parquet" else CSV_EXT
    names = [n for n in names if n.lower().endswith(wanted)] or names
    digest = hashlib.sha256()
    total = 0
    for name in names:
        info = entries[name]
        total += int(info.get("size") or 0)
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get(
            "LastModified") or info.get("created") or ""
        digest.update(f"{name}\0{info.get('size')}\0{stamp}\n".encode())
    files = tuple(fs.unstrip_protocol(n) if protocol not in ("file", "local") else n
                  for n in names)
    return Source(url=url, protocol=protocol, format=fmt, files=files,
                  fingerprint=digest.hexdigest()[:16], bytes=total, fs=fs)


def _format_of(names: Sequence[str], url: str) -> str:
    lowered = [n.lower() for n in names]
    if all(n.endswith(PARQUET_EXT) for n in lowered):
        return "parquet"
    if all(n.endswith(CSV_EXT) for n in lowered):
        return "csv"
    if any(n.endswith(PARQUET_EXT) for n in lowered):
        return "parquet"
    if any(n.endswith(CSV_EXT) for n in lowered):
        return "csv"
    raise DataError(f"cannot tell the format of the files at {url} from their names "
                    f"(e.g. {names[0]}); set data.format to csv or parquet")


def csv_separator(name: str) -> str:
    """The field separator of a CSV file, from its name: a tab for ``.tsv``/``.tsv.gz``.

    Examples
    --------
    >>> csv_separator("s3://b/x.tsv.gz"), csv_separator("data/x.csv")
    ('\\t', ',')
    """
    return "\t" if name.lower().endswith((".tsv", ".tsv.gz")) else ","


# --------------------------------------------------------------------------- headers


def read_headers(source: Source, max_workers: int = 16) -> dict[str, dict[str, str]]:
    """{file: {column: type name}} for every file; CSV headers have no types (``""``)."""
    reader = _parquet_header if source.format == "parquet" else _csv_header

    def one(name: str) -> tuple[str, dict[str, str]]:
        try:
            return name, reader(source.fs, name)
        except DataError:
            raise
        except Exception as exc:  # any reader failure: name the file, keep the cause
            raise DataError(f"cannot read the header of {name}: {type(exc).__name__}: {exc}. "
                            f"Is it a valid {source.format.upper()} file?") from exc

    with ThreadPoolExecutor(max_workers=min(max_workers, len(source.files))) as pool:
        return dict(pool.map(one, source.files))


def _parquet_header(fs: Any, name: str) -> dict[str, str]:
    import pyarrow.parquet as pq

    with fs.open(name, "rb") as f:
        schema = pq.read_schema(f)
    # a pandas index written without a name (``__index_level_0__``: any frame that was
    # filtered or split before ``to_parquet``) or dask's is row labels, not data
    names = [n for n in schema.names
             if n != "__null_dask_index__" and not re.fullmatch(r"__index_level_\d+__", n)]
    _no_duplicates(names, name)
    return {n: str(schema.field(n).type) for n in names}


def _csv_header(fs: Any, name: str) -> dict[str, str]:
    with fs.open(name, "rb", compression="infer") as raw, \
            io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        line = text.readline()
    if not line.strip():
        raise DataError(f"{name} is empty or has no header line; every CSV file needs a header")
    names = next(csv.reader([line], delimiter=csv_separator(name)))
    _no_duplicates(names, name)
    return dict.fromkeys(names, "")


def _no_duplicates(names: Sequence[str], file: str) -> None:
    seen: set[str] = set()
    dups = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dups:
        raise DataError(f"{file} has duplicated column names {dups}; rename them so each "
                        "column has one name")


def check_headers(headers: Mapping[str, Mapping[str, str]], *, schema: Mapping[str, str] | None,
                  required: Sequence[str]) -> list[str]:
    """Check every file against the contract (or, without one, against the first file).

    Returns the column names in file order. Raises :class:`DataError` naming the first bad
    file and column.
    """
    files = list(headers)
    first = headers[files[0]]
    columns = list(schema) if schema is not None else list(first)
    for name, header in headers.items():
        missing = [c for c in columns if c not in header]
        if schema is None and (missing or len(header) != len(first)):
            extra = [c for c in header if c not in first]
            raise DataError(f"{name} has other columns than {files[0]} (missing {missing}, "
                            f"extra {extra}); all files of one dataset need the same columns")
        if missing:
            raise DataError(f"column {missing[0]!r} of the schema contract (data.schema) is "
                            f"missing from {name}; found columns {list(header)}")
        if schema is not None:
            for column, declared in schema.items():
                found = header[column]
                if found and not _compatible(found, declared):
                    raise DataError(f"column {column!r} has type {found} in {name}; expected "
                                    f"{declared} (data.schema). Fix the file or the contract")
    for column in required:
        if column not in columns:
            raise DataError(f"column {column!r} is not in the data ({files[0]}); "
                            f"found columns {columns}{did_you_mean(column, columns)}")
    return columns


#: rows of each CSV file read by :func:`check_csv_sample` before any compute
CSV_SAMPLE_ROWS = 1000


def check_csv_sample(source: Source, schema: Mapping[str, str] | None,
                     rows: int = CSV_SAMPLE_ROWS, max_workers: int = 16) -> None:
    """CSV headers carry no types: read the first ``rows`` rows of every file and check the
    columns the contract declares numeric or boolean. A value that cannot be one is named with
    its file, line and column, before any compute (a bad value further down still fails the
    read, without the line).
    """
    if source.format != "csv" or not schema:
        return
    import pandas as pd

    declared = {c: t for c, t in schema.items()
                if t.lower().startswith(("int", "uint", "float")) or t in ("bool", "boolean")}
    if not declared:
        return

    def one(name: str) -> None:
        with source.fs.open(name, "rb", compression="infer") as f:
            sample = pd.read_csv(f, usecols=list(declared), dtype=str, nrows=rows,
                                 sep=csv_separator(name), keep_default_na=True)
        for column, kind in declared.items():
            text = sample[column]
            present = text.notna()
            if kind in ("bool", "boolean"):
                bad = present & ~text.str.strip().str.lower().isin(
                    ["true", "false", "1", "0", "t", "f", "yes", "no"])
            else:
                bad = present & pd.to_numeric(text, errors="coerce").isna()
            if bad.any():
                row = int(bad.to_numpy().argmax())
                raise DataError(
                    f"column {column!r} of {name} holds {text.iloc[row]!r} on line {row + 2}, "
                    f"which is not a {kind} value (data.schema declares it {kind}); fix the "
                    "file, or declare the column as category or str")

    with ThreadPoolExecutor(max_workers=min(max_workers, len(source.files))) as pool:
        list(pool.map(one, source.files))


def _compatible(arrow_type: str, declared: str) -> bool:
    """Can a Parquet column of ``arrow_type`` be read as ``declared`` without losing meaning?"""
    t = arrow_type.lower()
    is_int = t.startswith(("int", "uint"))
    is_float = t.startswith(("float", "double", "halffloat", "decimal"))
    is_text = t.startswith(("string", "large_string", "utf8", "large_utf8", "string_view"))
    if declared in ("category",):
        return is_text or is_int or t.startswith(("dictionary", "bool"))
    if declared in ("str", "string", "object"):
        return is_text or t.startswith("dictionary")
    if declared.lower().startswith(("int", "uint")):
        return is_int or t == "bool"
    if declared.lower().startswith("float"):
        return is_int or is_float or t == "bool"
    if declared in ("bool", "boolean"):
        return t == "bool"
    if declared.startswith("datetime"):
        return t.startswith(("timestamp", "date"))
    return False


# --------------------------------------------------------------------------- read


def read(source: Source, columns: Sequence[str], *, schema: Mapping[str, str] | None = None,
         drop: Sequence[str] = (), storage_options: Mapping[str, Any] | None = None,
         blocksize: str = "64MiB") -> Any:
    """The lazy dask DataFrame of ``columns`` (minus ``drop``), coerced to the contract."""
    import dask.dataframe as dd

    keep = [c for c in columns if c not in set(drop)]
    options = dict(storage_options or {})
    files = list(source.files)
    if source.format == "parquet":
        ddf = dd.read_parquet(files, columns=keep, storage_options=options, index=False)
        numeric: list[str] = []
    else:
        # declared numbers are read as text and converted in _coerce, so that a bad value
        # is named with its column and file (pandas' parser would only say "could not
        # convert string to float")
        numeric = [c for c, t in (schema or {}).items()
                   if c in keep and t.lower().startswith(("int", "uint", "float"))]
        dtypes = {c: "str" if c in numeric else _csv_dtype(t)
                  for c, t in (schema or {}).items() if c in keep}
        ddf = dd.read_csv(files, usecols=keep, dtype=dtypes or None,
                          sep=csv_separator(files[0]),
                          blocksize=None if _compressed(files[0]) else blocksize,
                          storage_options=options,
                          include_path_column=_PATH if numeric else False)
        ddf = ddf[[*keep, _PATH] if numeric else keep]
    casts = {c: t for c, t in (schema or {}).items() if c in keep and str(ddf.dtypes[c]) != t}
    # Always one map_partitions, even without casts: persisting a bare projected read_parquet
    # gives a collection whose keys were never computed ("lost dependencies" on the next
    # compute, dask/dask#12488).
    return ddf.map_partitions(_coerce, casts, numeric, meta=_coerce(ddf._meta, casts, numeric))


#: the file of each CSV row, while its declared numbers are converted (then dropped)
_PATH = "__mlpipe_path__"


def _coerce(df: Any, casts: Mapping[str, str], numeric: Sequence[str] = ()) -> Any:
    import pandas as pd

    if numeric:
        df = df.copy()
        for column in numeric:
            text = df[column]
            values = pd.to_numeric(text, errors="coerce")
            bad = text.notna() & values.isna()
            if bad.any():
                i = int(bad.to_numpy().argmax())
                raise DataError(f"column {column!r} of {df[_PATH].iloc[i]} holds "
                                f"{text.iloc[i]!r}, which is not a {casts.get(column)} value "
                                "(data.schema); fix the file, or declare the column as "
                                "category or str")
            df[column] = values
        df = df.drop(columns=_PATH)
    try:
        return df.astype(dict(casts)) if casts else df
    except (TypeError, ValueError) as exc:
        column = next((c for c in casts if not _casts_cleanly(df[c], casts[c])), "?")
        raise DataError(f"column {column!r} cannot be read as {casts.get(column)} "
                        f"(data.schema): {exc}") from exc


def _casts_cleanly(values: Any, dtype: str) -> bool:
    try:
        values.astype(dtype)
    except (TypeError, ValueError):
        return False
    return True


def _csv_dtype(declared: str) -> str:
    # datetimes are parsed after reading; read_csv's dtype= does not take them
    return "str" if declared.startswith("datetime") else declared


def _compressed(name: str) -> bool:
    return name.lower().endswith((".gz", ".bz2", ".zst", ".xz"))


# --------------------------------------------------------------------------- pieces
#
# A fixed partitioning of the input, decided from listings, headers and footers only, so that
# partition ``i`` is the same rows on every run (what a resumable batch job needs; dask's own
# readers decide theirs when the graph is built). :func:`read_piece` reads one partition.


@dataclass(frozen=True)
class Piece:
    """One input partition: a row-group range of a Parquet file or a byte range of a CSV file.

    ``stop``: the row group (Parquet) or byte (CSV) after the last; ``None`` for a whole
    compressed CSV file.
    """

    index: int
    file: str
    start: int
    stop: int | None
    rows: int | None = None  # known for Parquet (from the footer)
    names: tuple[str, ...] | None = None  # CSV: the file's header (later blocks have none)

    def describe(self, fmt: str) -> str:
        if fmt == "parquet":
            last = (self.stop or 0) - 1
            groups = (f"row group {self.start}" if last == self.start
                      else f"row groups {self.start}-{last}")
            return f"partition {self.index} ({self.file}, {groups})"
        if self.stop is None:
            return f"partition {self.index} ({self.file})"
        return f"partition {self.index} ({self.file}, bytes {self.start:,}-{self.stop:,})"


def parquet_pieces(source: Source, partition_rows: int, max_workers: int = 16) -> list[Piece]:
    """Consecutive row groups of each file, up to ``partition_rows`` rows (at least one group).

    Reads the footers only (in a thread pool). A row group is never split, and a file with no
    row groups is one empty piece, so the numbering depends on the listing alone.

    Examples
    --------
    >>> pieces = parquet_pieces(find_files("data/demo"), 500_000)      # doctest: +SKIP
    >>> pieces[0].describe("parquet")                                  # doctest: +SKIP
    'partition 0 (data/demo/part-00000.parquet, row group 0)'
    """
    import pyarrow.parquet as pq

    def groups(name: str) -> list[int]:
        with source.fs.open(name, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    with ThreadPoolExecutor(max_workers=min(max_workers, len(source.files))) as pool:
        sizes = list(pool.map(groups, source.files))
    pieces: list[Piece] = []
    for name, rows in zip(source.files, sizes):
        if not rows:  # a file with no row groups: an empty partition keeps numbering stable
            pieces.append(Piece(len(pieces), name, 0, 0, 0))
            continue
        start, total = 0, 0
        for i, n in enumerate(rows):
            if i > start and total + n > partition_rows:
                pieces.append(Piece(len(pieces), name, start, i, total))
                start, total = i, 0
            total += n
        pieces.append(Piece(len(pieces), name, start, len(rows), total))
    return pieces


def csv_pieces(source: Source, blocksize: int,
               headers: Mapping[str, Mapping[str, str]]) -> list[Piece]:
    """Byte ranges of ``blocksize`` of each CSV file; a compressed file is one piece.

    ``headers`` is :func:`read_headers`' answer: each piece carries its file's column names,
    since only the first block of a file has the header line.

    Examples
    --------
    >>> src = find_files("data/demo.csv")                                  # doctest: +SKIP
    >>> csv_pieces(src, 64 * 2**20, read_headers(src))[0].describe("csv")  # doctest: +SKIP
    'partition 0 (data/demo.csv, bytes 0-1,234,567)'
    """
    sizes = [int(source.fs.size(name)) for name in source.files]
    pieces: list[Piece] = []
    for name, size in zip(source.files, sizes):
        names = tuple(headers[name])
        if _compressed(name):  # no random access into a compressed stream
            pieces.append(Piece(len(pieces), name, 0, None, names=names))
            continue
        for start in range(0, max(size, 1), blocksize):
            pieces.append(Piece(len(pieces), name, start, min(start + blocksize, size),
                                names=names))
    return pieces


def csv_dtypes(source: Source, columns: Sequence[str], declared: Mapping[str, str],
               infer: Sequence[str] = ()) -> dict[str, str]:
    """Fixed dtypes for every CSV column read, so that all pieces parse alike.

    Columns ``declared`` numeric are read as float64 (a missing value in one block must not
    change the dtype), other declared or undeclared ones as str (a bool is left to pandas);
    the columns in ``infer`` are typed once, from the first 10,000 rows of the first file
    (boolean, Int64, float64 or str), then fixed.

    Examples
    --------
    >>> csv_dtypes(find_files("data/demo.csv"), ["id", "income", "city"],
    ...            {"income": "int64", "city": "category"}, infer=["id"])  # doctest: +SKIP
    {'income': 'float64', 'city': 'str', 'id': 'Int64'}
    """
    import pandas as pd

    out: dict[str, str] = {}
    for column in columns:
        if column in infer:
            continue
        kind = str(declared.get(column, ""))
        if re.match(r"^(u?int|float)\d*$", kind, re.I):
            out[column] = "float64"
        elif kind not in ("bool", "boolean"):
            out[column] = "str"
    if infer:
        with source.fs.open(source.files[0], "rb", compression="infer") as f:
            sample = pd.read_csv(f, usecols=list(infer), nrows=10_000,
                                 sep=csv_separator(source.files[0]))
        for column in infer:
            dtype = sample[column].dtype
            if pd.api.types.is_bool_dtype(dtype):
                out[column] = "boolean"
            elif pd.api.types.is_integer_dtype(dtype):
                out[column] = "Int64"
            elif pd.api.types.is_float_dtype(dtype):
                out[column] = "float64"
            else:
                out[column] = "str"
    return out


def read_piece(piece: Piece, fmt: str, columns: Sequence[str], *,
               dtypes: Mapping[str, str] | None = None, sep: str = ",",
               storage_options: Mapping[str, Any] | None = None) -> Any:
    """One piece as a pandas DataFrame of ``columns``, in that order.

    Opens the file itself (``storage_options`` as for :func:`find_files`), so it runs in any
    worker task. CSV: the rows that *start* in ``[start, stop)``, the same split as dask's
    ``read_csv``, parsed with ``dtypes`` (:func:`csv_dtypes`) and ``sep``.

    Examples
    --------
    >>> src = find_files("data/demo")                                  # doctest: +SKIP
    >>> piece = parquet_pieces(src, 500_000)[0]                        # doctest: +SKIP
    >>> read_piece(piece, "parquet", ["income", "city"]).shape         # doctest: +SKIP
    (125000, 2)
    """
    from fsspec.core import url_to_fs

    fs = url_to_fs(piece.file, **dict(storage_options or {}))[0]
    if fmt == "parquet":
        return _read_parquet_piece(fs, piece, list(columns))
    return _read_csv_piece(fs, piece, list(columns), dict(dtypes or {}), sep)


def _read_parquet_piece(fs: Any, piece: Piece, columns: list[str]) -> Any:
    import pyarrow.parquet as pq

    with fs.open(piece.file, "rb") as f:
        pf = pq.ParquetFile(f)
        groups = list(range(piece.start, piece.stop or 0))
        table = (pf.read_row_groups(groups, columns=columns, use_threads=False)
                 if groups else pf.schema_arrow.empty_table().select(columns))
    return table.to_pandas()


def _read_csv_piece(fs: Any, piece: Piece, columns: list[str], dtypes: dict[str, str],
                    sep: str) -> Any:
    import pandas as pd
    from fsspec.utils import read_block

    with fs.open(piece.file, "rb", compression="infer" if piece.stop is None else None) as f:
        if piece.stop is None:
            data = f.read()
        else:  # the rows that start in [start, stop): the same split as dask's read_csv
            data = read_block(f, piece.start, piece.stop - piece.start, delimiter=b"\n")
    if not data.strip():
        return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})
    first = piece.start == 0
    frame = pd.read_csv(io.BytesIO(data), sep=sep, usecols=columns,
                        dtype=dtypes or None, header=0 if first else None,
                        names=None if first else list(piece.names or ()))
    return frame[columns]


def pieces_meta(source: Source, columns: Sequence[str],
                dtypes: Mapping[str, str] | None = None) -> Any:
    """The empty pandas frame :func:`read_piece` returns the columns and dtypes of (the
    ``meta`` of a dask DataFrame built from pieces): the first Parquet file's schema, or the
    CSV ``dtypes`` (float64 for a column without one)."""
    import pandas as pd

    if source.format == "parquet":
        import pyarrow.parquet as pq

        with source.fs.open(source.files[0], "rb") as f:
            schema = pq.read_schema(f)
        return schema.empty_table().select(list(columns)).to_pandas()
    dtypes = dtypes or {}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})


# --------------------------------------------------------------------------- summarize


@dataclass
class Summary:
    """What the stages need to know about the data, from one compute."""

    rows: int
    columns: dict[str, str]  # column -> dtype
    missing: dict[str, int]
    classes: list[Any] | None  # sorted class labels (classification), positive class last
    class_counts: dict[str, int] | None
    target_stats: dict[str, float] | None  # regression: min, max, mean, std
    levels: dict[str, dict[str, int]]  # categorical column -> {level: count}
    time_cutoff: Any = None

    def to_json(self, top: int = 20) -> dict[str, Any]:
        """JSON-able, with each categorical column's level count and its ``top`` levels only
        (a column of 20,000 employers would otherwise fill the bundle)."""
        doc = dict(self.__dict__)
        doc["levels"] = {c: {"n_levels": len(counts),
                             "top": dict(sorted(counts.items(), key=lambda kv: -kv[1])[:top])}
                         for c, counts in self.levels.items()}
        return json.loads(json.dumps(doc, default=str))


def categorical_columns(ddf: Any, exclude: Sequence[str] = ()) -> list[str]:
    """Columns holding categories or text (object, str, string, category, bool)."""
    import pandas as pd

    out = []
    for column, dtype in ddf.dtypes.items():
        if column in exclude:
            continue
        if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype) \
                or pd.api.types.is_object_dtype(dtype):
            out.append(column)
    return out


def summarize(ddf: Any, *, target: str, task: str, source: str,
              positive: Any = None, time_column: str | None = None,
              holdout: float = 0.2, exclude_levels: Sequence[str] = ()) -> Summary:
    """Validate the data for training and describe it, in one ``dask.compute``.

    Raises :class:`DataError` for: zero rows, missing or infinite labels, a single class, a
    binary task without exactly two classes, or a classification target with more than
    ``MAX_CLASSES`` distinct values.
    """
    import dask
    import numpy as np
    import pandas as pd

    y = ddf[target]
    cats = categorical_columns(ddf, exclude=[target, *exclude_levels])
    lazy: dict[str, Any] = {
        "rows": ddf.shape[0],
        "missing": ddf.isna().sum(),
        "levels": {c: ddf[c].value_counts(dropna=True, split_out=1) for c in cats},
    }
    numeric_target = pd.api.types.is_numeric_dtype(y.dtype) and not pd.api.types.is_bool_dtype(
        y.dtype)
    if task == "regression" and not numeric_target:
        raise DataError(f"the target {target!r} has dtype {y.dtype} in {source}; a regression "
                        "target must be numeric (or set data.task to binary/multiclass)")
    if numeric_target:
        lazy["infinite"] = y.isin([np.inf, -np.inf]).sum()
    if task == "regression":
        lazy["tstats"] = {"min": y.min(), "max": y.max(), "mean": y.mean(), "std": y.std()}
    else:
        lazy["classes"] = y.value_counts(dropna=True, split_out=1)
    if time_column:
        lazy["cutoff"] = ddf[time_column].quantile(1.0 - holdout)
    (got,) = dask.compute(lazy)

    rows = int(got["rows"])
    if rows == 0:
        raise DataError(f"{source} has zero rows; nothing to train on")
    missing = {str(k): int(v) for k, v in got["missing"].items()}
    if missing.get(target):
        raise DataError(
            f"the target {target!r} is missing in {missing[target]} of {rows} rows of {source}"
            f"{_example(ddf, ddf[target].isna())}. Drop or fill those rows before training")
    if got.get("infinite"):
        raise DataError(
            f"the target {target!r} is infinite in {int(got['infinite'])} rows of {source}"
            f"{_example(ddf, ddf[target].isin([np.inf, -np.inf]))}; "
            "labels must be finite numbers")
    classes = counts = tstats = None
    if task == "regression":
        tstats = {k: float(v) for k, v in got["tstats"].items()}
        if tstats["min"] == tstats["max"]:
            raise DataError(f"the target {target!r} has one value ({tstats['min']}) in all "
                            f"{rows} rows of {source}; there is nothing to learn")
    else:
        vc = got["classes"]
        if len(vc) < 2:
            only = list(vc.index)
            raise DataError(f"the target {target!r} has a single class {only} in {source}; a "
                            "classifier needs at least two. Check the data or the filter")
        if len(vc) > MAX_CLASSES:
            raise DataError(f"the target {target!r} has {len(vc)} distinct values in {source};"
                            f" more than {MAX_CLASSES} classes is not a classification task "
                            "(set data.task: regression?)")
        if task == "binary" and len(vc) != 2:
            raise DataError(f"data.task is binary but the target {target!r} has {len(vc)} "
                            f"classes ({_preview(list(vc.index))}); use task: multiclass")
        if task == "multiclass" and len(vc) == 2:
            raise DataError(f"data.task is multiclass but the target {target!r} has two classes;"
                            " use task: binary")
        classes = sorted(vc.index.tolist(), key=_sort_key)
        if task == "binary" and positive is not None:
            if positive not in classes:
                raise DataError(f"data.positive {positive!r} is not a class of {target!r} "
                                f"(classes: {classes})")
            classes = [c for c in classes if c != positive] + [positive]
        counts = {str(k): int(v) for k, v in vc.items()}
    levels = {c: {str(k): int(v) for k, v in got["levels"][c].items()} for c in cats}
    dtypes = {str(c): str(t) for c, t in ddf.dtypes.items()}
    return Summary(rows=rows, columns=dtypes, missing=missing, classes=_plain(classes),
                   class_counts=counts, target_stats=tstats, levels=levels,
                   time_cutoff=got.get("cutoff"))


def _sort_key(value: Any) -> tuple:
    return (0, value) if isinstance(value, int | float | bool) else (1, str(value))


def _plain(values: list[Any] | None) -> list[Any] | None:
    if values is None:
        return None
    out = []
    for v in values:
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(v)
    return out


def _preview(values: list[Any], n: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (", ..." if len(values) > n else "")


def _example(ddf: Any, mask: Any) -> str:
    """' (e.g. row {...})' for the first offending row; only computed on the error path."""
    try:
        row = ddf[mask].head(1, npartitions=-1)
    except Exception:  # the example is a courtesy; never hide the real error
        return ""
    if row.empty:
        return ""
    record = {k: (None if isinstance(v, float) and math.isnan(v) else v)
              for k, v in row.iloc[0].to_dict().items()}
    shown = dict(list(record.items())[:8])
    return f" (e.g. the row {shown})"


# --------------------------------------------------------------------------- a job's data


@dataclass
class Training:
    """A job's training data: where it came from, the frame, and what its columns are."""

    source: Source
    frame: Any  # lazy after plan_training; persisted (and checked) after load_training
    columns: list[str]  # read from the files
    feature_columns: list[str]  # model inputs (and window context)
    summary: Summary | None = None
    duplicates: int = 0  # exact duplicate rows removed (preprocess.dedupe)


def plan_training(job: JobSpec) -> Training:
    """Find the job's files, check their headers and a sample of rows, and plan the read.

    Nothing is computed: errors in the declared schema or columns come before any work.

    Examples
    --------
    >>> planned = plan_training(load_job("examples/demo.yaml"))     # doctest: +SKIP
    >>> planned.frame.npartitions                                    # doctest: +SKIP
    4
    """
    data, context = job.data, job.window_columns
    source = find_files(data.train, job.storage_options, data.format)
    required = [data.target, *data.id_columns, *([data.split.by] if data.split.by else []),
                *job.evaluate.slices, *context]
    columns = check_headers(read_headers(source), schema=data.schema_, required=required)
    check_csv_sample(source, data.schema_)
    frame = read(source, columns, schema=data.schema_,
                 drop=[c for c in data.drop if c not in context],
                 storage_options=job.storage_options, blocksize=data.blocksize)
    feature_columns = [c for c in frame.columns
                       if c not in {data.target, *data.id_columns, *data.drop} or c in context]
    return Training(source, frame, list(columns), feature_columns)


def load_training(job: JobSpec, planned: Training) -> Training:
    """Read the planned data into the current cluster's memory, drop duplicates if asked, and
    summarize it.

    Rows sharing a window-feature key end up in one partition (window features see each key's
    whole history). The summary validates the target (:func:`summarize`).
    """
    from distributed import wait

    data, frame = job.data, planned.frame
    window_keys = {f.key for f in job.features if f.kernel in ("rolling", "lag")}
    if window_keys:
        frame = frame.shuffle(on=next(iter(window_keys)))
    # the collection's own persist: client.persist(frame) can leave keys that a later
    # compute reports as "lost dependencies" (seen with CSV sources)
    frame = frame.persist()
    wait(frame)
    duplicates = 0
    if job.preprocess.dedupe:
        import dask

        before = frame.shape[0]
        frame = frame.drop_duplicates().persist()
        wait(frame)
        before, after = dask.compute(before, frame.shape[0])
        duplicates = int(before - after)
    summary = summarize(frame, target=data.target, task=data.task, source=data.train,
                        positive=data.positive, time_column=data.split.by,
                        holdout=data.split.holdout, exclude_levels=data.id_columns)
    return Training(planned.source, frame, planned.columns, planned.feature_columns, summary,
                    duplicates)
