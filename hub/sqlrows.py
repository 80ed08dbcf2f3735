"""Many rows in few SQLite statements, for the hub's and the nodes' writer threads.

Python's sqlite3 gives up the GIL around every step of a statement, and ``executemany`` steps
once per row. A writer thread then takes the GIL back once per row, each time behind whatever
Python code the event loop (or a verify thread) is running: with one busy Python thread,
seven rows one by one cost 446 us of wall time against 116 us in one statement (measured on
the 2-core machines the benchmarks run on). One multi-row ``INSERT`` steps once.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

def read_only_uri(path: Path | str) -> str:
    """The URI that opens ``path`` read-only (``sqlite3.connect(..., uri=True)``): built from the
    path as a file URI, so a file name with ``?`` or ``#`` in it is still that file."""
    return f"{Path(path).resolve().as_uri()}?mode=ro"


#: Bound parameters per statement: SQLite's limit before 3.32, so any SQLite a Python links takes it.
MAX_PARAMS: Final[int] = 999


def insert_rows(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``sql`` (an INSERT whose last clause is one ``VALUES (...)`` row) for every row of ``rows``,
    in as few statements as :data:`MAX_PARAMS` allows. Rows go in in order."""
    if not rows:
        return
    head, values, row = sql.rpartition("VALUES")
    row = row.strip()
    if not values or not (row.startswith("(") and row.endswith(")")):
        raise ValueError(f"not an INSERT ... VALUES (...) statement: {sql!r}")
    per = max(1, MAX_PARAMS // max(1, row.count("?")))
    for i in range(0, len(rows), per):
        chunk = rows[i:i + per]
        conn.execute(f"{head}VALUES {','.join([row] * len(chunk))}", list(itertools.chain.from_iterable(chunk)))


#: Values per ``IN (...)`` list, leaving room under :data:`MAX_PARAMS` for a statement's own.
IN_LIST: Final[int] = 900


def select_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql``, whose ``IN ({})`` takes ``values``, in as few queries as
    :data:`IN_LIST` allows (one step per query and row, instead of a query per value)."""
    for i in range(0, len(values), IN_LIST):
        chunk = list(values[i:i + IN_LIST])
        yield from conn.execute(sql.format(",".join("?" * len(chunk))), chunk)
