"""latency_db.errors on the drivers' real errors: a missing table or column is named, a read-only transaction is
"unavailable" (retry later), a constraint violation is neither."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from latency_db.errors import is_store_unavailable, missing_schema_object


def error_of(engine: Engine, *statements: str) -> DBAPIError:
    with engine.connect() as connection:
        with pytest.raises(DBAPIError) as caught:
            for statement in statements:
                connection.execute(text(statement))
    return caught.value


@pytest.mark.parametrize(("statement", "missing"), [
    ("SELECT * FROM no_such_table", "table no_such_table"),
    ("SELECT nope FROM devices", "column nope"),
    ("INSERT INTO devices (nope) VALUES (1)", "column nope"),
])
def test_a_missing_table_or_column_is_named(db_engine: Engine, statement: str, missing: str) -> None:
    error = error_of(db_engine, statement)
    assert missing_schema_object(error) == missing
    assert is_store_unavailable(error)  # the next start migrates the schema back


def test_a_constraint_violation_is_no_schema_problem(db_engine: Engine) -> None:
    error = error_of(db_engine, "INSERT INTO jobs (id) VALUES (1)")  # NOT NULL columns missing
    assert missing_schema_object(error) is None
    assert not is_store_unavailable(error)


@pytest.mark.postgres
def test_a_write_in_a_read_only_postgresql_transaction_is_unavailable(postgres_url: str) -> None:
    from latency_db.connection import make_engine
    from latency_db.migrate import upgrade_to_head

    upgrade_to_head(postgres_url)
    engine = make_engine(postgres_url)
    try:
        error = error_of(engine, "SET TRANSACTION READ ONLY", "UPDATE devices SET name = name")
    finally:
        engine.dispose()
    assert is_store_unavailable(error) and missing_schema_object(error) is None
