"""Alembic environment for the sample project: the database URL comes from DATABASE_URL only.

`invoke migrate` opens the tunnel, fetches the password from Secrets Manager and sets DATABASE_URL
in this process's environment (never its argv). A plain `postgresql://` URL (what `invoke db-url`
prints, what libpq tools accept) is run with the psycopg 3 driver.
"""

from __future__ import annotations

import os
import sys
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

# Offline mode (--sql) needs only the dialect; it never connects.
OFFLINE_URL = "postgresql+psycopg://offline@localhost/offline"


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        if context.is_offline_mode():
            return OFFLINE_URL
        sys.exit("DATABASE_URL is not set; run migrations with `invoke migrate --env NAME`")
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=None, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # One transaction for the whole run: PostgreSQL DDL is transactional, so a failing
        # revision leaves the schema exactly as it was before the run.
        context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
