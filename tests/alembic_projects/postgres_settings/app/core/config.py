"""Application settings from the environment, with defaults for a developer's local database."""

import os
from urllib.parse import quote


class Settings:
    def __init__(self) -> None:
        self.POSTGRES_SERVER = os.environ.get("POSTGRES_SERVER", "localhost")
        self.POSTGRES_PORT = int(os.environ.get("POSTGRES_PORT", "5432"))
        self.POSTGRES_USER = os.environ.get("POSTGRES_USER", "postgres")
        self.POSTGRES_PASSWORD = os.environ.get("POSTGRES_PASSWORD", "")
        self.POSTGRES_DB = os.environ.get("POSTGRES_DB", "app")

    @property
    def SQLALCHEMY_DATABASE_URI(self) -> str:
        return (f"postgresql+psycopg://{quote(self.POSTGRES_USER, safe='')}:"
                f"{quote(self.POSTGRES_PASSWORD, safe='')}@{self.POSTGRES_SERVER}:{self.POSTGRES_PORT}/"
                f"{self.POSTGRES_DB}")


settings = Settings()
