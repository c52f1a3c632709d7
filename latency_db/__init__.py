"""latency_db: the latency store (SQLAlchemy 2.0 models, engine from a URL, Alembic migrations, repository).

Modules: ``engine`` (make_engine, make_session_factory, sqlite_url, DEFAULT_DB_URL), ``transactions`` (read
sessions, and write_session / begin_write for every transaction that writes), ``context`` (MeasurementContext: what
a stored latency depends on besides device and op), ``models`` (ORM classes and status constants), ``migrate``
(upgrade_to_head, current_revision), ``repository`` (functions taking a Session), ``hashing`` (canonical JSON
sha256).
"""
