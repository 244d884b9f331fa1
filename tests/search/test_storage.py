import pytest

from slimkit.errors import ConfigError
from slimkit.search import make_storage, mask_url


def test_password_never_shown():
    url = "postgresql+psycopg://alice:s3cr3t@db.example:5432/studies"
    assert mask_url(url) == "postgresql+psycopg://alice:***@db.example:5432/studies"
    assert mask_url(f"could not connect to {url}: refused") == (
        "could not connect to postgresql+psycopg://alice:***@db.example:5432/studies: refused"
    )
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_bad_storage_errors_hide_the_password():
    with pytest.raises(ConfigError) as err:
        make_storage("postgresql+psycopg://bob:hunter2@127.0.0.1:1/none?connect_timeout=1")
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(ConfigError, match="SQLAlchemy URL"):
        make_storage("study.db")


def test_sqlite_default_creates_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_storage(None)
    assert (tmp_path / "slimkit-search.db").exists()


def test_unknown_database_scheme_shows_what_a_url_looks_like(tmp_path):
    # SQLAlchemy alone says "Can't load plugin: sqlalchemy.dialects:bogus"
    with pytest.raises(ConfigError, match=r"bogus.*looks like sqlite:///study.db or postgresql"):
        make_storage("bogus://x")
    with pytest.raises(ConfigError, match="looks like sqlite"):
        make_storage("bogus://x", create=False)
