"""hub.sqlrows: many rows in few statements, the same rows as one statement per row."""

from __future__ import annotations

import sqlite3

import pytest

from hub.sqlrows import MAX_PARAMS, insert_rows


def _conn() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:", isolation_level=None)
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b BLOB, c INTEGER)")
    c.execute("CREATE TABLE u (k TEXT PRIMARY KEY, v INTEGER)")
    return c


def test_rows_go_in_in_order_in_as_few_statements_as_the_parameter_limit_allows() -> None:
    c = _conn()
    statements: list[str] = []
    c.set_trace_callback(statements.append)
    rows = [(f"name {i}", bytes([i % 256]) * 3, i * 7) for i in range(1000)]
    insert_rows(c, "INSERT INTO t VALUES (NULL, ?, ?, ?)", rows)
    c.set_trace_callback(None)
    per = MAX_PARAMS // 3
    assert len(statements) == -(-len(rows) // per) == 4
    assert all(s.count("?") <= MAX_PARAMS for s in statements)
    assert c.execute("SELECT a, b, c FROM t ORDER BY id").fetchall() == rows


def test_or_ignore_and_named_columns_keep_their_meaning() -> None:
    c = _conn()
    c.execute("INSERT INTO u VALUES ('x', 1)")
    insert_rows(c, "INSERT OR IGNORE INTO u (k, v) VALUES (?, ?)", [("x", 2), ("y", 3), ("y", 4)])
    assert c.execute("SELECT k, v FROM u ORDER BY k").fetchall() == [("x", 1), ("y", 3)]


def test_a_failing_row_fails_its_statement_and_nothing_of_it_is_written() -> None:
    c = _conn()
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(c, "INSERT INTO u VALUES (?, ?)", [("p", 1), ("q", 2), ("p", 3)])
    assert c.execute("SELECT COUNT(*) FROM u").fetchone() == (0,)


def test_no_rows_is_no_statement_and_a_statement_without_one_values_row_is_refused() -> None:
    c = _conn()
    statements: list[str] = []
    c.set_trace_callback(statements.append)
    insert_rows(c, "INSERT INTO u VALUES (?, ?)", [])
    assert statements == []
    with pytest.raises(ValueError, match="not an INSERT"):
        insert_rows(c, "INSERT INTO u SELECT ?, ?", [("a", 1)])


def test_select_in_answers_for_every_value_in_lists_under_the_parameter_limit() -> None:
    from hub.sqlrows import IN_LIST, select_in

    c = _conn()
    insert_rows(c, "INSERT INTO u VALUES (?, ?)", [(f"k{i}", i) for i in range(2500)])
    statements: list[str] = []
    c.set_trace_callback(statements.append)
    wanted = [f"k{i}" for i in range(0, 2500, 2)] + ["absent"]
    got = sorted(select_in(c, "SELECT k, v FROM u WHERE k IN ({})", wanted))
    c.set_trace_callback(None)
    assert got == sorted((f"k{i}", i) for i in range(0, 2500, 2))
    assert len(statements) == -(-len(wanted) // IN_LIST) == 2
    assert list(select_in(c, "SELECT k FROM u WHERE k IN ({})", [])) == []
