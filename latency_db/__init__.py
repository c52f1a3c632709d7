"""latency_db: the latency store (SQLAlchemy 2.0 models, connection from a URL, Alembic migrations, repository).

Modules: ``connection`` (the SQLAlchemy Engine and sessions from a database URL: make_engine, make_session_factory,
sqlite_url, DEFAULT_DB_URL), ``transactions`` (read sessions, and write_session / begin_write for every transaction
that writes), ``context`` (MeasurementContext: what a stored latency depends on besides device and op), ``models``
(ORM classes and status constants), ``stats`` (the statistics every measurement carries: StatsFields, STATS_KEYS),
``migrate`` (upgrade_to_head, current_revision), ``repository`` (functions taking a Session), ``hashing`` (canonical
JSON sha256).
"""
