"""Settings object of an async application: one DATABASE_URL, used with the asyncpg driver."""

import os


class Settings:
    def __init__(self) -> None:
        self.DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres:postgres@localhost:5432/app")

    @property
    def async_database_url(self) -> str:
        scheme, rest = self.DATABASE_URL.split("://", 1)
        return f"postgresql+asyncpg://{rest}" if scheme in ("postgresql", "postgres") else self.DATABASE_URL


settings = Settings()
