"""Secrets in URLs never reach the store or a log; a storage password comes from the environment (issue 13)."""

from __future__ import annotations

import pytest

from segft import cli
from segft.urls import STORAGE_PASSWORD_ENV, redact, require_driver, storage_with_password

SECRET = "PLANTED-s3cret"

REDACTIONS = [
    ("postgresql://segft:s3cret@db.example.org:5432/optuna", "postgresql://segft:***@db.example.org:5432/optuna"),
    ("postgresql://db/optuna?password=s3cret&sslmode=require", "postgresql://db/optuna?password=***&sslmode=require"),
    ("postgresql://segft@db/optuna?sslpassword=s3cret", "postgresql://segft@db/optuna?sslpassword=***"),
    ("http://user:s3cret@host:5000/api?token=s3cret#top", "http://user:***@host:5000/api?token=***#top"),
    ("storage=mysql+pymysql://u:s3cret@h/d and more", "storage=mysql+pymysql://u:***@h/d and more"),
    ("sqlite:////abs/path/optuna.db", "sqlite:////abs/path/optuna.db"),
    ("sqlite:///optuna.db?timeout=30", "sqlite:///optuna.db?timeout=30"),
    ("no url at all", "no url at all"),
]


@pytest.mark.parametrize("text, expected", REDACTIONS)
def test_redact_hides_passwords_in_userinfo_and_query_strings(text, expected):
    assert redact(text) == expected


def test_a_storage_password_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(STORAGE_PASSWORD_ENV, SECRET)
    assert storage_with_password("postgresql://segft@db/optuna") == f"postgresql://segft:{SECRET}@db/optuna"
    with pytest.raises(ValueError, match="names no user"):
        storage_with_password("sqlite:///optuna.db")
    monkeypatch.delenv(STORAGE_PASSWORD_ENV)
    assert storage_with_password("postgresql://segft@db/optuna") == "postgresql://segft@db/optuna"


def test_a_missing_database_driver_is_named_with_its_package():
    with pytest.raises(ValueError, match=r"'pg8000'.*pip install 'pg8000'"):
        require_driver(f"postgresql+pg8000://segft:{SECRET}@db/optuna", "storage")
    require_driver("sqlite:///optuna.db", "storage")
    require_driver("http://127.0.0.1:5000", "MLFLOW_TRACKING_URI")


@pytest.mark.slow
def test_a_planted_storage_secret_is_nowhere_in_the_tracking_store(store, tmp_path, capsys):
    """Tune with a password in the storage URL's query string, then search every byte of the store: the SQLite
    database (runs, params, tags, metrics, model registry) and every artifact file."""
    from segft.data.synthetic import make_microtube_study, write_study

    data = write_study(make_microtube_study(n_images=4), tmp_path / "data")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}?password={SECRET}&sslpassword={SECRET}"
    status = cli.main(["tune", "--target", "base", "--n-trials", "1", "--storage", storage, "--data-dir", str(data),
                       "--epochs", "1", "--batch-size", "16", "--patch-size", "64", "--encoder", "resnet18",
                       "--encoder-depth", "3", "--decoder-channels", "16,8,4", "--dataset1-train-images", "3",
                       "--dataset2-pool-images", "3", "--apply"])
    printed = capsys.readouterr()
    assert status == 0, printed.err[-3000:]
    assert SECRET not in printed.out + printed.err
    runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert any(run.data.params.get("storage", "").endswith("password=***&sslpassword=***") for run in runs)
    from pathlib import Path
    from urllib.parse import urlparse

    roots = {Path(urlparse(run.info.artifact_uri).path).parents[1] for run in runs}  # experiment folders
    files = [tmp_path / "mlflow.db", *(p for root in roots for p in root.rglob("*") if p.is_file())]
    assert len(files) > 10
    assert [str(path) for path in files if SECRET.encode() in path.read_bytes()] == []
