"""Study storage: an SQLite file by default, any SQLAlchemy URL (PostgreSQL) to scale out.

Workers on many machines open the same URL and study name. A heartbeat marks running trials;
a worker killed mid-trial stops beating, its trial is failed after the grace period and
re-queued once (RetryHeartbeatStaleTrialCallback), so no trial stays stuck RUNNING.
URLs are only ever shown through :func:`mask_url` (password replaced by ``***``).
"""

from __future__ import annotations

import re
from pathlib import Path

from slimkit.errors import ConfigError, import_extra

# Seconds between a running trial's heartbeats. Every process of a study must use the same value:
# each fails trials whose last beat is older than its own grace period (2x its interval), so a
# process with a shorter one fails the others' live trials. A study records it (open_study).
HEARTBEAT = 10

_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@]*):(?P<pw>[^@/]*)@")


def mask_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db`` (also inside messages)."""
    return _PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def default_url(folder: str | Path = ".") -> str:
    return f"sqlite:///{Path(folder).resolve() / 'slimkit-search.db'}"


def sqlite_path(url: str) -> Path | None:
    """The database file of an ``sqlite:///`` URL (None for other databases).

    An in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``) is refused: the study
    would vanish when the process exits, and the heartbeat thread, which opens its own
    connection, would find an empty database.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # sqlalchemy.exc.ArgumentError: not a URL at all
        raise ConfigError(
            f"storage must be an SQLAlchemy URL such as sqlite:///study.db or "
            f"postgresql+psycopg://user@host/db, but got {mask_url(url)!r}"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return None
    if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        raise ConfigError(
            f"storage {mask_url(url)!r} is an in-memory SQLite database, which loses the study "
            "when the command exits; give a file: sqlite:///slimkit-search.db (relative) or "
            "sqlite:////abs/path/study.db"
        )
    return Path(parsed.database)


def make_storage(
    url: str | None = None,
    *,
    heartbeat_interval: int = HEARTBEAT,
    grace_period: int | None = None,
    max_retry: int = 1,
    create: bool = True,
):
    """An Optuna RDBStorage with heartbeat + retry; ``None`` means ``./slimkit-search.db``.

    ``create=False`` opens only a database that already holds Optuna's tables (a worker joining
    a study): a missing SQLite file or an empty database is a ConfigError and nothing is created.
    """
    import warnings

    optuna = import_extra("optuna", "search")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = url or default_url()
    if "://" not in url:
        raise ConfigError(
            f"storage must be an SQLAlchemy URL such as sqlite:///study.db or "
            f"postgresql+psycopg://user@host/db, but got {mask_url(url)!r}"
        )
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    path = sqlite_path(url)
    engine_kwargs = (
        {"connect_args": {"timeout": 30}} if path is not None else {"pool_pre_ping": True}
    )
    if not create:
        _require_optuna_tables(url, path, engine_kwargs)
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry
            ),
        )
    except Exception as exc:  # connection/driver errors: never echo the password
        raise _open_error(url, exc) from None


def _open_error(url: str, exc: Exception) -> ConfigError:
    """The driver's first line (password masked), plus what a URL looks like when the scheme
    names no database SQLAlchemy knows ('Can't load plugin: sqlalchemy.dialects:bogus')."""
    from sqlalchemy.exc import NoSuchModuleError

    hint = (
        "; a storage URL looks like sqlite:///study.db or postgresql+psycopg://user@host/db"
        if isinstance(exc, NoSuchModuleError)
        else ""
    )
    return ConfigError(
        f"cannot open study storage {mask_url(url)}: {mask_url(str(exc).splitlines()[0])}{hint}"
    )


def _require_optuna_tables(url: str, path: Path | None, engine_kwargs: dict) -> None:
    """Refuse (creating nothing) a storage that does not already hold Optuna's tables."""
    if path is not None and not path.is_file():
        raise ConfigError(
            f"no study storage at {mask_url(url)}: the file {str(path)!r} does not exist; "
            "check the path, or create the study first with slimkit search hpo|nas|auto --storage URL"
        )
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        try:
            with engine.connect() as conn:
                has_studies = sqlalchemy.inspect(conn).has_table("studies")
        finally:
            engine.dispose()
    except Exception as exc:  # connection/driver errors: never echo the password
        raise _open_error(url, exc) from None
    if not has_studies:
        raise ConfigError(
            f"storage {mask_url(url)} holds no Optuna studies (no 'studies' table); check the "
            "URL, or create the study first with slimkit search hpo|nas|auto --storage URL"
        )
