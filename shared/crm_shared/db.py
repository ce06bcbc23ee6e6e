"""PostgreSQL helpers: one schema per service inside the database named by `CRM_DATABASE_URL`."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import ARRAY, String, any_, bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} must be lower-case letters, digits and underscores")
    return schema


def make_engine(database_url: str, *, schema: str, pool_size: int = 10, max_overflow: int = 10,
                pre_ping: bool = True) -> AsyncEngine:
    """An async engine whose connections see the service's own schema first."""
    check_schema_name(schema)
    url = make_url(database_url)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=pre_ping,
        hide_parameters=True,  # SQL errors are logged: their parameters may hold personal data
        json_serializer=lambda value: orjson.dumps(value).decode(),
        json_deserializer=orjson.loads,
        connect_args={"server_settings": {"search_path": f"{schema},public", "application_name": schema}},
    )


async def ensure_schema(engine: AsyncEngine, schema: str) -> None:
    check_schema_name(schema)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))


def any_of(column: Any, values: Iterable[str]) -> Any:
    """`column = ANY(:values)` with the list as one array parameter: an `IN (...)` of a large list
    runs out of PostgreSQL's 32,767 parameters."""
    return column == any_(bindparam(None, list(values), type_=ARRAY(String)))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # money as its exact decimal string; PostgreSQL reads it back as numeric
    if isinstance(value, uuid.UUID):  # asyncpg's own UUID (a uuid read back), which orjson does not know
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def recordset(name: str, columns: Mapping[str, str], *, numbered: bool = False) -> str:
    """`jsonb_to_recordset(...) AS name(column type, ...)`: many rows as ONE parameter `:name`, for a
    set-based statement (`INSERT ... SELECT`, `UPDATE ... FROM`) in place of an executemany. Measured
    on replenishment's stock (2,000 rows of 24 columns): the executemany's per-row parameter
    processing in SQLAlchemy and per-row execution in PostgreSQL cost many times this one statement.
    `numbered`: each row also carries `name.row_number`, its place in the list (a SELECT from a
    set-returning function does not promise the list's order; `ORDER BY name.row_number` does).
    Pass the rows with `recordset_rows`."""
    rows = f"jsonb_to_recordset(CAST(CAST(:{name} AS text) AS jsonb))"
    typed = ", ".join(f"{column} {sql_type}" for column, sql_type in columns.items())
    if numbered:
        return f"ROWS FROM ({rows} AS ({typed})) WITH ORDINALITY AS {name}({', '.join(columns)}, row_number)"
    return f"{rows} AS {name}({typed})"


def column_types(table: Any, columns: Iterable[str]) -> dict[str, str]:
    """`columns` of a SQLAlchemy `table` with their PostgreSQL types, for `recordset`."""
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    return {str(name): table.c[name].type.compile(dialect=dialect) for name in columns}


def insert_from_recordset(table: Any, columns: Sequence[str], *, tail: str = "ON CONFLICT DO NOTHING") -> str:
    """`INSERT INTO table (columns) SELECT ... FROM jsonb_to_recordset(:rows) ... <tail>` (say, with
    `RETURNING id`): any number of rows in ONE statement whose text never changes with their number,
    inserted in the order given.
    Pass the rows with `recordset_rows(rows, columns)`; columns left out take their defaults.

    Why not `conn.execute(insert(t).returning(...), rows)`: SQLAlchemy runs that as "insertmanyvalues",
    a `VALUES (...), (...)` list written for each batch's row count, and every distinct count is one
    more prepared statement that PostgreSQL keeps, planned, for the life of the connection (up to 100
    per connection in SQLAlchemy's asyncpg cache). `bench/e2e.py` found replenishment's backends at
    22-61 MB each, mostly such plans of `INSERT INTO needs ... RETURNING` (up to 8.7 MB apiece), and
    PostgreSQL's memory growing ~10 KB per steady sale."""
    types = column_types(table, columns)
    quoted = {f'"{c}"': sql_type for c, sql_type in types.items()}
    # In the order given: a serial column numbers the rows in it (say, the order a topic gave).
    return (f'INSERT INTO {table.name} ({", ".join(quoted)}) SELECT {", ".join(f"rows.{c}" for c in quoted)} '
            f"FROM {recordset('rows', quoted, numbered=True)} ORDER BY rows.row_number {tail}")


def upsert_tail(key: Sequence[str], columns: Iterable[str], *, also: str = "") -> str:
    """`ON CONFLICT (key) DO UPDATE SET` every non-key column of `columns` to the incoming row's
    value (and `also`, say `updated_at = now()`): the `tail` of an `insert_from_recordset` upsert."""
    sets = [f'"{c}" = excluded."{c}"' for c in columns if c not in key]
    return f'ON CONFLICT ({", ".join(key)}) DO UPDATE SET {", ".join([*sets, also] if also else sets)}'


def recordset_rows(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> str:
    """The value of a `recordset` parameter: the rows' `columns` as a JSON array of objects (dates and
    times as ISO 8601, Decimals as strings, floats exactly: orjson writes the shortest round trip)."""
    names = list(columns)
    return orjson.dumps([{c: row[c] for c in names} for row in rows], default=_json_default,
                        option=orjson.OPT_NON_STR_KEYS).decode()  # column names may be str subclasses


def sync_url(database_url: str) -> str:
    """The same database for a synchronous driver-less use (logging, display) without the password."""
    return make_url(database_url).render_as_string(hide_password=True)


async def asyncpg_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one, for hot paths that skip SQLAlchemy's per-row work."""
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None:
        raise ConnectionError("the database connection is closed")
    return driver
