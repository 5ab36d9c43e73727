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
from dataclasses import dataclass, field, replace
from functools import partial
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
    encoding: str = "utf-8"  # of CSV files (data.encoding)
    sql: SqlSource | None = None  # format "sql": the table or query behind the URL


#: SQLAlchemy dialects whose URLs are SQL sources (``sqlite:///x.db?table=loans&index=id``)
SQL_DIALECTS = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle")


@dataclass(frozen=True)
class SqlSource:
    """A SQL source: the connection URL without mlpipe's own parameters, and what to read:
    a ``table`` or a ``query`` (one SELECT), partitioned by ranges of the ``index`` column.
    ``columns``, ``rows``, ``low`` and ``high`` are what the database answered when the
    source was found (the fingerprint, and the ranges scoring cuts)."""

    connection: str
    table: str | None
    query: str | None
    index: str  # an indexed, orderable column: the partitions are ranges of it
    partitions: int | None = None
    columns: tuple[str, ...] = ()
    rows: int = 0
    low: Any = None
    high: Any = None

    @property
    def what(self) -> str:
        """``table 'loans'`` or ``query``, for messages."""
        return f"table {self.table!r}" if self.table else "query"

    def relation(self) -> Any:
        """The FROM clause: the table, or the query as a named subquery."""
        import sqlalchemy as sa

        if self.table:
            return sa.table(self.table)
        return sa.text(f"({self.query}) AS mlpipe_query")

    def select(self, columns: Sequence[str]) -> Any:
        """``SELECT columns FROM`` :meth:`relation` (a SQLAlchemy Selectable)."""
        import sqlalchemy as sa

        return sa.select(*[sa.column(c) for c in columns]).select_from(self.relation())


def is_sql(url: str) -> bool:
    """Is ``url`` a SQLAlchemy database URL (``sqlite:///x.db?table=t&index=id``, or
    ``?query=SELECT...&index=id``)?"""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return scheme.split("+", 1)[0].lower() in SQL_DIALECTS


def find_files(url: str, storage_options: Mapping[str, Any] | None = None,
               fmt: str = "auto", encoding: str = "utf-8") -> Source:
    """List the data files at ``url`` (a file, a directory or a glob) without reading them.

    Files whose names start with ``_`` or ``.`` (``_SUCCESS``, ``_metadata``) are skipped.
    ``encoding`` is the text encoding of CSV files (every CSV reader below takes it from the
    returned :class:`Source`).

    Examples
    --------
    >>> src = find_files("data/demo")                  # doctest: +SKIP
    >>> src.format, len(src.files)                     # doctest: +SKIP
    ('parquet', 16)
    """
    from fsspec.core import url_to_fs

    if is_sql(url):
        return _sql_source(url)
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
                  fingerprint=digest.hexdigest()[:16], bytes=total, fs=fs, encoding=encoding)


def _sql_source(url: str) -> Source:
    """A SQL table or query as a :class:`Source`: its columns are checked like a file's
    header; its row count and index range make the fingerprint."""
    import sqlalchemy as sa

    sql = sql_parts(url)
    where = f"the {sql.what} at {_shown(sql.connection)}"
    try:
        engine = sa.create_engine(sql.connection)
        with engine.connect() as conn:
            if sql.table:
                columns = [c["name"] for c in sa.inspect(conn).get_columns(sql.table)]
            else:
                columns = list(conn.execute(sa.select(sa.text("*"))
                                            .select_from(sql.relation()).limit(0)).keys())
            if not columns:
                raise DataError(f"no {sql.what} at {_shown(sql.connection)}")
            if sql.index not in columns:
                raise DataError(f"the index column {sql.index!r} is not in {where}; found "
                                f"columns {columns}{did_you_mean(sql.index, columns)}")
            index = sa.column(sql.index)
            rows, low, high = conn.execute(sa.select(
                sa.func.count(), sa.func.min(index), sa.func.max(index))
                .select_from(sql.relation())).one()
    except sa.exc.NoSuchTableError:
        raise DataError(f"no {sql.what} at {_shown(sql.connection)}") from None
    except sa.exc.SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"cannot read {where}: {first}") from None
    except ImportError as exc:  # the database's Python driver
        raise DataError(f"cannot read {where}: its database driver is not installed "
                        f"({exc}); install it in this environment and on the workers, or "
                        "name an installed one in the URL (e.g. mysql+pymysql://)") from None
    finally:
        if "engine" in locals():
            engine.dispose()
    stamp = f"{sql.connection}\0{sql.table or sql.query}\0{columns}\0{rows}\0{low}\0{high}"
    return Source(url=url, protocol="sql", format="sql", files=(url,),
                  fingerprint=hashlib.sha256(stamp.encode()).hexdigest()[:16], bytes=0, fs=None,
                  sql=replace(sql, columns=tuple(columns), rows=int(rows), low=low, high=high))


def sql_parts(url: str) -> SqlSource:
    """What a SQL URL asks for, parsed without connecting: the connection URL (mlpipe's own
    parameters removed), the table or query, the index column and the partition count."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    params = dict(parse_qsl(urlsplit(url).query))
    table, query = params.pop("table", None), params.pop("query", None)
    index, partitions = params.pop("index", None), params.pop("partitions", None)
    if not (table or query) or (table and query) or not index:
        raise DataError(f"the SQL source {_shown(url)} needs ?table=NAME&index=COLUMN or "
                        "?query=SELECT...&index=COLUMN (one of table and query, URL-encoded; "
                        "the index an indexed, orderable column of it, e.g. the primary key: "
                        "partitions are ranges of it)")
    if partitions is not None and not (partitions.isdigit() and int(partitions) > 0):
        raise DataError(f"the SQL source {_shown(url)}: partitions must be a positive "
                        f"integer, got {partitions!r}")
    # not urlunsplit: it drops the empty host of sqlite:///path
    connection = url.split("?", 1)[0] + (f"?{urlencode(params)}" if params else "")
    return SqlSource(connection, table, query.strip().rstrip(";") if query else None, index,
                     int(partitions) if partitions else None)


def _shown(url: str) -> str:
    """A database URL as messages show it: the password masked, the query string cut."""
    import sqlalchemy as sa

    base = url.split("?", 1)[0]
    try:
        return sa.engine.make_url(base).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return base


def sql_pieces(source: Source, partition_rows: int) -> list[Piece]:
    """Ranges of the SQL source's numeric index column of about ``partition_rows`` rows
    each (evenly spaced between its smallest and largest value; the last range open above).

    Examples
    --------
    >>> src = find_files("sqlite:///loans.db?table=loans&index=id")      # doctest: +SKIP
    >>> sql_pieces(src, 500_000)[0].describe("sql")                       # doctest: +SKIP
    'partition 0 (sqlite:///loans.db, id >= 1, < 500001)'
    """
    import math
    import numbers

    sql = source.sql
    if not sql.rows:
        return [Piece(0, source.url, 0, None, 0, names=(sql.index,))]
    if not all(isinstance(v, numbers.Real) for v in (sql.low, sql.high)):
        raise DataError(f"the index column {sql.index!r} of the {sql.what} at "
                        f"{_shown(sql.connection)} holds {type(sql.low).__name__} values; "
                        "scoring cuts the rows into ranges of a numeric index column: give "
                        "one (e.g. an integer primary key) as index=")
    n = max(1, min(math.ceil(sql.rows / partition_rows), 10_000))
    step = (sql.high - sql.low) / n
    integral = all(isinstance(v, numbers.Integral) for v in (sql.low, sql.high))
    edges = [sql.low + (math.ceil(step * k) if integral else step * k) for k in range(n)]
    edges = sorted(set(edges))
    return [Piece(i, source.url, start, edges[i + 1] if i + 1 < len(edges) else None,
                  names=(sql.index,))
            for i, start in enumerate(edges)]


def read_sql_piece(piece: Piece, columns: Sequence[str]) -> Any:
    """The rows of one SQL piece (its index range), as a pandas DataFrame of ``columns``."""
    import pandas as pd
    import sqlalchemy as sa

    sql = sql_parts(piece.file)
    index = sa.column(sql.index)
    query = sql.select(columns).where(index >= piece.start)
    if piece.stop is not None:
        query = query.where(index < piece.stop)
    engine = sa.create_engine(sql.connection)
    try:
        with engine.connect() as conn:
            return pd.read_sql(query.order_by(index), conn)[list(columns)]
    finally:
        engine.dispose()


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
    if source.sql is not None:  # typed by the database; coerced to the contract when read
        return {source.url: dict.fromkeys(source.sql.columns, "")}

    def reader(fs: Any, name: str) -> dict[str, str]:
        if source.format == "parquet":
            return _parquet_header(fs, name)
        return _csv_header(fs, name, source.encoding)

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


def _csv_header(fs: Any, name: str, encoding: str = "utf-8") -> dict[str, str]:
    with fs.open(name, "rb", compression="infer") as raw:
        head = raw.readline()
    try:
        line = head.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(_not_encoded(name, encoding, 1, exc)) from None
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
            # undecodable bytes are the reader's to name (with their line)
            sample = pd.read_csv(f, usecols=list(declared), dtype=str, nrows=rows,
                                 sep=csv_separator(name), keep_default_na=True,
                                 encoding=source.encoding, encoding_errors="replace")
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
         blocksize: str = "64MiB", bad_lines: str = "error") -> Any:
    """The lazy dask DataFrame of ``columns`` (minus ``drop``), coerced to the contract.

    See :func:`read_counted`; this is its frame alone.
    """
    return read_counted(source, columns, schema=schema, drop=drop,
                        storage_options=storage_options, blocksize=blocksize,
                        bad_lines=bad_lines)[0]


def read_counted(source: Source, columns: Sequence[str], *,
                 schema: Mapping[str, str] | None = None, drop: Sequence[str] = (),
                 storage_options: Mapping[str, Any] | None = None, blocksize: str = "64MiB",
                 bad_lines: str = "error") -> tuple[Any, Any]:
    """The lazy dask DataFrame of ``columns`` (minus ``drop``) coerced to the contract, and
    the lazy number of malformed CSV lines skipped (``0`` for Parquet).

    CSV files are read in the fixed partitions of :func:`csv_pieces` by :func:`read_piece`,
    the reader scoring uses too, so that every bad value, malformed line or undecodable byte
    is named with its file and line. Columns without a declared type get the type pandas
    infers from the first 10,000 rows of the first file (dask's ``read_csv`` would infer
    one from a sample and fail later with a table of mismatched dtypes). ``bad_lines``:
    ``"error"`` refuses a row with more fields than the header, ``"skip"`` drops and counts it.

    Examples
    --------
    >>> src = find_files("data/demo.csv")                               # doctest: +SKIP
    >>> frame, skipped = read_counted(src, ["income", "default"])       # doctest: +SKIP
    >>> frame.npartitions, skipped.compute()                             # doctest: +SKIP
    (1, 0)
    """
    keep = [c for c in columns if c not in set(drop)]
    options = dict(storage_options or {})
    declared = {c: t for c, t in (schema or {}).items() if c in keep}
    if source.format == "parquet":
        ddf, skipped, where = _read_parquet(source, keep, options), 0, source.url
    elif source.sql is not None:
        ddf, skipped, where = _read_sql(source.sql, keep), 0, source.url
    else:
        ddf, skipped = _read_csv(source, keep, declared, options, blocksize, bad_lines)
        where = ""  # the CSV reader names file and line itself
    casts = {c: t for c, t in declared.items() if str(ddf.dtypes[c]) != t}
    # Always one map_partitions, even without casts: persisting a bare projected read
    # gives a collection whose keys were never computed ("lost dependencies" on the next
    # compute, dask/dask#12488).
    return (ddf.map_partitions(_coerce, casts, where, meta=_coerce(ddf._meta, casts, where)),
            skipped)


#: the number of malformed lines a CSV partition skipped (data.bad_lines: skip), in its first
#: row; summed, then dropped
_SKIPPED = "__mlpipe_skipped__"

#: the largest magnitude a feature may have: XGBoost stores features as float32, where a
#: larger number is infinite (its C++ check refuses it with no column named)
MAX_ABS = 3.4028234663852886e38


def _read_parquet(source: Source, keep: list[str], options: dict[str, Any]) -> Any:
    """The pieces of :func:`parquet_pieces` read by :func:`read_piece`, as scoring reads them.

    Not ``dd.read_parquet``: its per-partition reader costs about 50 ms per 250,000 x 28
    float32 row group against 36 ms for ``ParquetFile.read_row_groups`` and a zero-copy
    ``to_pandas`` (issue #18's loading row). Each partition holds the file's own dtypes and a
    fresh RangeIndex, as ``dd.read_parquet(index=False)`` gives; strings become dask's
    pyarrow strings, and categorical columns have unknown categories in the meta. The tasks
    keep the name of dask's reader (``read_parquet``) on the dashboard.
    """
    import dask.dataframe as dd
    from dask.dataframe.utils import clear_known_categories

    pieces = parquet_pieces(source, PARTITION_ROWS)
    return dd.from_map(read_piece, pieces, fmt="parquet", columns=keep, storage_options=options,
                       meta=clear_known_categories(pieces_meta(source, keep)),
                       divisions=[None] * (len(pieces) + 1), label="read_parquet",
                       enforce_metadata=False)


def _read_sql(sql: SqlSource, keep: list[str]) -> Any:
    """dask's ``read_sql_table`` (a table) or ``read_sql_query`` (a query): partitions are
    ranges of the index column."""
    import dask.dataframe as dd

    columns = [c for c in keep if c != sql.index]
    options = {"npartitions": sql.partitions} if sql.partitions else {}
    if sql.table:
        ddf = dd.read_sql_table(sql.table, sql.connection, index_col=sql.index,
                                columns=columns, **options)
    else:
        ddf = dd.read_sql_query(sql.select([sql.index, *columns]), sql.connection,
                                index_col=sql.index, **options)
    return ddf.reset_index()[keep] if sql.index in keep else ddf[keep]


def _read_csv(source: Source, keep: list[str], declared: Mapping[str, str],
              options: dict[str, Any], blocksize: str, bad_lines: str) -> tuple[Any, Any]:
    import dask.dataframe as dd
    from dask.utils import parse_bytes

    headers = read_headers(source)
    pieces = csv_pieces(source, int(parse_bytes(blocksize)), headers)
    infer = [c for c in keep if c not in declared]
    dtypes = csv_dtypes(source, keep, declared, infer=infer, nullable=False)
    meta = pieces_meta(source, keep, dtypes).assign(**{_SKIPPED: 0})
    raw = dd.from_map(_read_csv_part, pieces, keep=keep, dtypes=dtypes,
                      sep=csv_separator(source.files[0]), storage_options=options,
                      bad_lines=bad_lines, inferred=tuple(infer), meta=meta,
                      divisions=[None] * (len(pieces) + 1), label="mlpipe-read-csv",
                      enforce_metadata=False)
    return raw[keep], raw[_SKIPPED].sum()


def _read_csv_part(piece: Piece, *, keep: list[str], dtypes: dict[str, str], sep: str,
                   storage_options: dict[str, Any], bad_lines: str,
                   inferred: tuple[str, ...]) -> Any:
    frame, skipped = read_csv_piece(piece, keep, dtypes=dtypes, sep=sep,
                                    storage_options=storage_options, bad_lines=bad_lines,
                                    inferred=inferred)
    if skipped and frame.empty:  # the count rides in the first row; a part with none...
        raise DataError(f"every line of {piece.describe('csv')} has more fields than the "
                        f"header ({skipped} lines); is {piece.file} a CSV file with the "
                        "header's columns (and the separator its name implies)?")
    column = [0] * len(frame)
    if column:
        column[0] = skipped
    return frame.assign(**{_SKIPPED: column})


def _coerce(df: Any, casts: Mapping[str, str], where: str = "") -> Any:
    """Cast to the contract; ``where``: the Parquet source, whose numbers are checked here
    (the CSV reader checks its own, naming the line)."""
    if where:
        for column in df.columns:
            if _is_float(df[column].dtype):
                _check_finite(df[column], column, where, first_line=None)
    try:
        return df.astype(dict(casts)) if casts else df
    except (TypeError, ValueError) as exc:
        column = next((c for c in casts if not _casts_cleanly(df[c], casts[c])), "?")
        raise DataError(f"column {column!r} cannot be read as {casts.get(column)} "
                        f"(data.schema): {exc}") from exc


def _is_float(dtype: Any) -> bool:
    import pandas as pd

    return pd.api.types.is_float_dtype(dtype)


def _check_finite(values: Any, column: str, where: str, first_line: int | None) -> None:
    """Refuse infinity and numbers beyond float32 (:data:`MAX_ABS`): the policy for features
    (README, "Bad input"). ``first_line``: the file line of the first value, if known."""
    import numpy as np

    if isinstance(values.dtype, np.dtype):  # numpy floats: a view, checked in their own type
        array = values.to_numpy()  # (float32 holds nothing beyond +-3.4e38 but infinity)
    else:  # pandas' nullable Float32/Float64
        array = values.to_numpy(dtype="float64", na_value=np.nan)
    bad = np.abs(array) > MAX_ABS  # NaN compares False: missing values are fine
    if not bad.any():
        return
    i = int(bad.argmax())
    at = f" on line {first_line + i}" if first_line is not None else f" (row {i} of a partition)"
    raise DataError(
        f"column {column!r} of {where} holds {float(array[i])!r}{at} ({int(bad.sum())} such value(s) "
        f"there); infinite numbers and numbers beyond +-3.4e38 (float32, what XGBoost "
        "stores) cannot be features or labels. Replace them with an empty field (a missing "
        "value, imputed like any other) or a finite number")


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
    """One input partition: a row-group range of a Parquet file, a byte range of a CSV file,
    or a range of a SQL source's index column (``file`` its URL).

    ``stop``: the row group (Parquet), byte (CSV) or index value (SQL) after the last;
    ``None`` for a whole compressed CSV file or the last SQL range (open above).
    """

    index: int
    file: str
    start: int | float
    stop: int | float | None
    rows: int | None = None  # known for Parquet (from the footer)
    #: CSV: the file's header (later blocks have none); SQL: (the index column,)
    names: tuple[str, ...] | None = None
    encoding: str = "utf-8"  # CSV: the file's text encoding (Source.encoding)

    def describe(self, fmt: str) -> str:
        if fmt == "sql":
            index = (self.names or ("index",))[0]
            upper = f", < {self.stop}" if self.stop is not None else ""
            return f"partition {self.index} ({_shown(self.file)}, {index} >= {self.start}{upper})"
        if fmt == "parquet":
            last = (self.stop or 0) - 1
            groups = (f"row group {self.start}" if last == self.start
                      else f"row groups {self.start}-{last}")
            return f"partition {self.index} ({self.file}, {groups})"
        if self.stop is None:
            return f"partition {self.index} ({self.file})"
        return f"partition {self.index} ({self.file}, bytes {self.start:,}-{self.stop:,})"


#: Parquet: consecutive row groups of one file are grouped up to this many rows per partition
#: (training reads and scoring jobs alike)
PARTITION_ROWS = 500_000


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
            pieces.append(Piece(len(pieces), name, 0, None, names=names,
                                encoding=source.encoding))
            continue
        for start in range(0, max(size, 1), blocksize):
            pieces.append(Piece(len(pieces), name, start, min(start + blocksize, size),
                                names=names, encoding=source.encoding))
    return pieces


def csv_dtypes(source: Source, columns: Sequence[str], declared: Mapping[str, str],
               infer: Sequence[str] = (), nullable: bool = True) -> dict[str, str]:
    """Fixed dtypes for every CSV column read, so that all pieces parse alike.

    Columns ``declared`` numeric are read as float64 (a missing value in one block must not
    change the dtype), other declared or undeclared ones as str (a bool is left to pandas);
    the columns in ``infer`` are typed once, from the first 10,000 rows of the first file
    (boolean, Int64, float64 or str; with ``nullable=False`` bool and int64, as pandas
    itself would type them), then fixed.

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
                                 sep=csv_separator(source.files[0]), encoding=source.encoding,
                                 encoding_errors="replace")
        for column in infer:
            dtype = sample[column].dtype
            if pd.api.types.is_bool_dtype(dtype):
                out[column] = "boolean" if nullable else "bool"
            elif pd.api.types.is_integer_dtype(dtype):
                out[column] = "Int64" if nullable else "int64"
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
    ``read_csv``, parsed with ``dtypes`` (:func:`csv_dtypes`) and ``sep`` by
    :func:`read_csv_piece` (a malformed line is an error).

    Examples
    --------
    >>> src = find_files("data/demo")                                  # doctest: +SKIP
    >>> piece = parquet_pieces(src, 500_000)[0]                        # doctest: +SKIP
    >>> read_piece(piece, "parquet", ["income", "city"]).shape         # doctest: +SKIP
    (125000, 2)
    """
    if fmt == "parquet":
        from fsspec.core import url_to_fs

        fs = url_to_fs(piece.file, **dict(storage_options or {}))[0]
        return _read_parquet_piece(fs, piece, list(columns))
    if fmt == "sql":
        return read_sql_piece(piece, columns)
    return read_csv_piece(piece, columns, dtypes=dtypes, sep=sep,
                          storage_options=storage_options, hints="model")[0]


def _read_parquet_piece(fs: Any, piece: Piece, columns: list[str]) -> Any:
    import pandas as pd
    import pyarrow.parquet as pq

    with fs.open(piece.file, "rb") as f:
        pf = pq.ParquetFile(f)
        groups = list(range(piece.start, piece.stop or 0))
        table = (pf.read_row_groups(groups, columns=columns, use_threads=False)
                 if groups else pf.schema_arrow.empty_table().select(columns))
    # one block per column, each a view of the Arrow buffer (no copy into a 2-D block)
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    frame.index = pd.RangeIndex(len(frame))  # not a stored index: rows are numbered per piece
    return frame


def read_csv_piece(piece: Piece, columns: Sequence[str], *,
                   dtypes: Mapping[str, str] | None = None, sep: str = ",",
                   storage_options: Mapping[str, Any] | None = None, bad_lines: str = "error",
                   inferred: Sequence[str] = (), hints: str = "job") -> tuple[Any, int]:
    """One CSV piece as (pandas DataFrame of ``columns``, malformed lines skipped).

    Every field of a row is parsed (pandas checks the field count only when it reads all
    columns), in ``piece.encoding``. What cannot be read is a :class:`DataError` naming the
    file and line: undecodable bytes, a row with more fields than the header (unless
    ``bad_lines="skip"``: dropped and counted), a value that is not a number in a numeric
    column (``inferred``: the columns typed from the first rows rather than data.schema),
    an infinite number or one beyond float32. ``hints``: what the messages suggest, the job's
    keys (``"job"``: training) or fixing the file (``"model"``: scoring with a model's types).
    """
    import warnings

    import pandas as pd
    from fsspec.core import url_to_fs
    from fsspec.utils import read_block
    from pandas.errors import ParserError, ParserWarning

    columns, dtypes = list(columns), dict(dtypes or {})
    fs = url_to_fs(piece.file, **dict(storage_options or {}))[0]
    with fs.open(piece.file, "rb", compression="infer" if piece.stop is None else None) as f:
        if piece.stop is None:
            data = f.read()
        else:  # the rows that start in [start, stop): the same split as dask's read_csv
            data = read_block(f, piece.start, piece.stop - piece.start, delimiter=b"\n")
    if not data.strip():
        return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64"))
                             for c in columns}), 0
    first = piece.start == 0
    names = list(piece.names or columns)
    if first:  # the header: checked against the contract by check_headers
        data = data[data.index(b"\n") + 1:] if b"\n" in data else b""
    line = _Lines(fs, piece, first)  # file line of the block's first row, on demand
    try:
        data.decode(piece.encoding)
    except UnicodeDecodeError as exc:
        raise DataError(_not_encoded(piece.file, piece.encoding,
                                     line.first + data.count(b"\n", 0, exc.start), exc,
                                     hints)) from None
    except LookupError:
        raise DataError(f"unknown text encoding {piece.encoding!r} (data.encoding); use a "
                        "Python codec name such as utf-8, latin-1 or cp1252") from None
    parse = {c: dtypes[c] for c in names if c in dtypes}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ParserWarning)
        try:
            frame = pd.read_csv(io.BytesIO(data), sep=sep, header=None, names=names,
                                dtype=parse or None, encoding=piece.encoding,
                                on_bad_lines="warn" if bad_lines == "skip" else "error")
        except ParserError as exc:
            raise DataError(_malformed(piece.file, line, str(exc), hints)) from None
        except (ValueError, TypeError) as exc:
            raise DataError(_bad_value(piece, data, names, parse, sep, line, inferred,
                                       exc, hints)) from None
    skipped = sum(str(w.message).count("Skipping line") for w in caught
                  if issubclass(w.category, ParserWarning))
    frame = frame[columns]
    if not skipped:  # without skipped lines, row i is on line first + i
        for column in columns:
            if _is_float(frame[column].dtype):
                values = frame[column]
                if (values.abs() > MAX_ABS).any():
                    _check_finite(values, column, piece.file, line.first)
    else:
        for column in columns:
            if _is_float(frame[column].dtype):
                _check_finite(frame[column], column, piece.file, None)
    return frame, skipped


class _Lines:
    """The file line of a CSV block's first data row, counted only when an error needs it."""

    def __init__(self, fs: Any, piece: Piece, first: bool) -> None:
        self.fs, self.piece, self.is_first = fs, piece, first
        self._first: int | None = 2 if first else None

    @property
    def first(self) -> int:
        if self._first is None:  # newlines before the block, +1
            count, done, step = 0, 0, 16 * 2**20
            with self.fs.open(self.piece.file, "rb") as f:
                while done < self.piece.start:
                    chunk = f.read(min(step, self.piece.start - done))
                    if not chunk:
                        break
                    count += chunk.count(b"\n")
                    done += len(chunk)
            # read_block starts a block after the first newline at or after ``start``
            self._first = count + 2
        return self._first


def _not_encoded(file: str, encoding: str, line: int, exc: UnicodeDecodeError,
                 hints: str = "job") -> str:
    raw = exc.object[exc.start:exc.end] if isinstance(exc.object, bytes) else b""
    fix = ("set data.encoding to the file's encoding (e.g. latin-1 or cp1252), or convert "
           if hints == "job" else "convert ")
    return (f"{file} is not {encoding} text: line {line} holds the byte(s) {raw!r}, which "
            f"{encoding} cannot decode; {fix}the file to UTF-8 (iconv -f latin1 -t utf-8)")


def _malformed(file: str, line: _Lines, message: str, hints: str = "job") -> str:
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if not found:
        return f"{file} cannot be parsed as CSV near line {line.first}: {message.strip()}"
    expected, at, saw = (int(g) for g in found.groups())
    return (f"{file}, line {line.first + at - 1}: {saw} fields where the header has "
            f"{expected}; fix or remove the row (a separator inside a value needs quotes)"
            + (", or set data.bad_lines: skip to skip malformed rows (they are counted)"
               if hints == "job" else ""))


def _bad_value(piece: Piece, data: bytes, names: list[str], parse: Mapping[str, str],
               sep: str, line: _Lines, inferred: Sequence[str], exc: Exception,
               hints: str = "job") -> str:
    """Why a block's typed parse failed: re-read it as text and name the first bad value."""
    import pandas as pd

    text = pd.read_csv(io.BytesIO(data), sep=sep, header=None, names=names, dtype=str,
                       encoding=piece.encoding, on_bad_lines="skip", keep_default_na=True)
    for column, kind in parse.items():
        values = text[column]
        present = values.notna()
        if kind.lower().startswith(("int", "uint", "float")):
            numbers = pd.to_numeric(values, errors="coerce")
            bad = present & numbers.isna()
            if kind.lower().startswith(("int", "uint")):
                bad = bad | ~present | (present & numbers.notna() & (numbers % 1 != 0))
        elif kind in ("bool", "boolean"):
            bad = present & ~values.str.strip().str.lower().isin(
                ["true", "false", "1", "0", "t", "f", "yes", "no"])
        else:
            continue
        if bad.any():
            i = int(bad.to_numpy().argmax())
            found = "an empty field" if not present.iloc[i] else repr(values.iloc[i])
            if hints == "model":
                origin = "the model was trained on numbers there; fix the file"
            elif column in inferred:
                origin = ("the first 10,000 rows of the first file typed it so; declare the "
                          "column in data.schema (e.g. str or category) or fix the file")
            else:
                origin = ("data.schema declares it so; fix the file, or declare the column "
                          "as category or str")
            return (f"column {column!r} of {piece.file} holds {found} on line "
                    f"{line.first + i}, which is not a {kind} value ({origin})")
    return (f"{piece.describe('csv')} cannot be read: {type(exc).__name__}: {exc}")


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
    bad_lines: int = 0  # malformed CSV lines skipped (data.bad_lines: skip)

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
    """Validate the data for training and describe it: one task per partition and a tree of
    merges, in one ``dask.compute`` (and one more for a time split's cutoff).

    Raises :class:`DataError` for: zero rows, missing or infinite labels, a single class, a
    binary task without exactly two classes, or a classification target with more than
    ``MAX_CLASSES`` distinct values.
    """
    import dask
    import numpy as np
    import pandas as pd

    from pipeline.frames import reduce_partitions

    y = ddf[target]
    cats = categorical_columns(ddf, exclude=[target, *exclude_levels])
    numeric_target = pd.api.types.is_numeric_dtype(y.dtype) and not pd.api.types.is_bool_dtype(
        y.dtype)
    if task == "regression" and not numeric_target:
        raise DataError(f"the target {target!r} has dtype {y.dtype} in {source}; a regression "
                        "target must be numeric (or set data.task to binary/multiclass)")
    # one task per partition (and a tree of merges) for every count and statistic; the time
    # split's cutoff is dask's own quantile, computed apart (a delayed value and an
    # expression in one compute make dask materialise the expression's whole graph)
    (got,) = dask.compute(reduce_partitions(
        ddf, partial(_partition_summary, target=target, cats=cats, task=task,
                     numeric_target=numeric_target), _merge_summaries))
    if time_column:
        got["cutoff"] = ddf[time_column].quantile(1.0 - holdout).compute()
    if task == "regression":
        got["tstats"] = _target_stats(got.pop("moments"))
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


def _partition_summary(df: Any, *, target: str, cats: Sequence[str], task: str,
                       numeric_target: bool) -> dict[str, Any]:
    """One partition's part of :func:`summarize`: rows, missing values per column, the levels
    of ``cats``, and the target's infinities, classes or moments (merged by
    :func:`_merge_summaries`)."""
    import numpy as np

    y = df[target]
    out: dict[str, Any] = {"rows": len(df), "missing": df.isna().sum(),
                           "levels": {c: df[c].value_counts(dropna=True) for c in cats}}
    if numeric_target:
        out["infinite"] = int(y.isin([np.inf, -np.inf]).sum())
    if task == "regression":
        values = y.dropna().to_numpy(dtype="float64")
        mean = float(values.mean()) if len(values) else 0.0
        out["moments"] = (len(values), mean, float(((values - mean) ** 2).sum()),
                          float(values.min()) if len(values) else np.inf,
                          float(values.max()) if len(values) else -np.inf)
    else:
        out["classes"] = y.value_counts(dropna=True)
    return out


def _merge_summaries(*parts: dict[str, Any]) -> dict[str, Any]:
    """Partition summaries added up (associative: any grouping gives the same result)."""
    import pandas as pd

    def counts(series: list[Any]) -> Any:  # value counts summed, the largest first
        return pd.concat(series).groupby(level=0, sort=False, observed=False).sum() \
            .sort_values(ascending=False, kind="stable")

    first = parts[0]
    out: dict[str, Any] = {"rows": sum(p["rows"] for p in parts),
                           "missing": sum((p["missing"] for p in parts[1:]), first["missing"]),
                           "levels": {c: counts([p["levels"][c] for p in parts])
                                      for c in first["levels"]}}
    if "infinite" in first:
        out["infinite"] = sum(p["infinite"] for p in parts)
    if "classes" in first:
        out["classes"] = counts([p["classes"] for p in parts])
    if "moments" in first:  # Chan et al.'s pairwise update of count, mean and squared error
        n, mean, m2, low, high = first["moments"]
        for k, mean_k, m2_k, low_k, high_k in (p["moments"] for p in parts[1:]):
            if k:
                total = n + k
                delta = mean_k - mean
                mean, m2 = mean + delta * k / total, m2 + m2_k + delta * delta * n * k / total
                n, low, high = total, min(low, low_k), max(high, high_k)
        out["moments"] = (n, mean, m2, low, high)
    return out


def _target_stats(moments: tuple[int, float, float, float, float]) -> dict[str, float]:
    """min, max, mean and (sample) std of a regression target from its merged moments."""
    n, mean, m2, low, high = moments
    return {"min": low, "max": high, "mean": mean,
            "std": (m2 / (n - 1)) ** 0.5 if n > 1 else float("nan")}


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
    #: lazy after plan_training; persisted (and checked) after load_training; its empty
    #: pandas meta after :meth:`release_rows`
    frame: Any
    columns: list[str]  # read from the files
    feature_columns: list[str]  # model inputs (and window context)
    summary: Summary | None = None
    duplicates: int = 0  # exact duplicate rows removed (preprocess.dedupe)
    #: malformed CSV lines skipped (data.bad_lines: skip): lazy after plan_training
    bad_lines: Any = 0

    def release_rows(self) -> None:
        """Let the cluster forget the loaded rows once the split's persisted sides hold them
        (:func:`pipeline.split.split_job`); the columns and dtypes stay (the frame's meta)."""
        self.frame = self.frame._meta


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
    source = find_files(data.train, job.storage_options, data.format, data.encoding)
    required = [data.target, *data.id_columns, *([data.split.by] if data.split.by else []),
                *job.evaluate.slices, *context]
    columns = check_headers(read_headers(source), schema=data.schema_, required=required)
    check_csv_sample(source, data.schema_)
    frame, bad_lines = read_counted(source, columns, schema=data.schema_,
                                    drop=[c for c in data.drop if c not in context],
                                    storage_options=job.storage_options,
                                    blocksize=data.blocksize, bad_lines=data.bad_lines)
    feature_columns = [c for c in frame.columns
                       if c not in {data.target, *data.id_columns, *data.drop} or c in context]
    return Training(source, frame, list(columns), feature_columns, bad_lines=bad_lines)


def load_training(job: JobSpec, planned: Training) -> Training:
    """Read the planned data into the current cluster's memory, drop duplicates if asked, and
    summarize it.

    Rows sharing a window-feature key end up in one partition (window features see each key's
    whole history). The summary validates the target (:func:`summarize`).
    """
    from pipeline.artifacts import reading_data

    with reading_data(job.data.train, "read the training data"):
        return _load_training(job, planned)


def _load_training(job: JobSpec, planned: Training) -> Training:
    import dask
    from distributed import wait

    data, frame = job.data, planned.frame
    window_keys = {f.key for f in job.features if f.kernel in ("rolling", "lag")}
    if window_keys:
        frame = frame.shuffle(on=next(iter(window_keys)))
    # the collection's own persist: client.persist(frame) can leave keys that a later
    # compute reports as "lost dependencies" (seen with CSV sources; so was persisting the
    # skipped-line count together with the frame). No wait: the computes below wait for the
    # rows they read, and the summary's tasks start as each partition lands
    frame = frame.persist()
    # data.bad_lines: error raises while reading; skip counts in a pass of its own
    bad_lines = int(dask.compute(planned.bad_lines)[0]) if data.bad_lines == "skip" else 0
    if bad_lines:
        logger.warning("skipped %s malformed line(s) of %s (more fields than the header; "
                       "data.bad_lines: skip)", f"{bad_lines:,}", data.train)
    duplicates = 0
    if job.preprocess.dedupe:
        before = frame.shape[0]
        frame = frame.drop_duplicates().persist()
        wait(frame)
        before, after = dask.compute(before, frame.shape[0])
        duplicates = int(before - after)
    summary = summarize(frame, target=data.target, task=data.task, source=data.train,
                        positive=data.positive, time_column=data.split.by,
                        holdout=data.split.holdout, exclude_levels=data.id_columns)
    summary.bad_lines = bad_lines
    return Training(planned.source, frame, planned.columns, planned.feature_columns, summary,
                    duplicates, bad_lines)
