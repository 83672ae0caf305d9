"""libpq URIs from Airflow connection fields.

`PostgresHook.get_uri()` writes a unix-socket host (`/run/postgresql`) unescaped into the URI,
which libpq then misreads; this builds the URI from the fields with the host percent-encoded,
so TCP and socket connections both work with psycopg and ADBC.
"""
from __future__ import annotations

from urllib.parse import quote, urlencode

# Extras that are libpq connection parameters (the rest are Airflow's own options).
LIBPQ_EXTRAS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name",
                "options", "target_session_attrs", "keepalives", "keepalives_idle"}


def libpq_uri(host: str | None, port: int | None, login: str | None, password: str | None,
              dbname: str | None, extra: dict | None = None) -> str:
    userinfo = quote(login or "", safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    netloc = (userinfo + "@" if userinfo else "") + quote(host or "", safe="")
    if port:
        netloc += f":{port}"
    query = urlencode(sorted((k, str(v)) for k, v in (extra or {}).items() if k in LIBPQ_EXTRAS))
    return f"postgresql://{netloc}/{quote(dbname or '', safe='')}" + (f"?{query}" if query else "")


def libpq_uri_for_connection(conn) -> str:
    """The URI of an Airflow `Connection` (what `PostgresHook.get_connection` returns)."""
    return libpq_uri(conn.host, conn.port, conn.login, conn.password, conn.schema, conn.extra_dejson)
