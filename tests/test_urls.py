"""Secrets in URLs never reach the store or a log, however the password is quoted or escaped (issues 13, 22); a
storage password comes from the environment; an unreachable tracking server is reported at once (issue 22)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from urllib.parse import quote

import pytest

from segft import cli
from segft.urls import (STORAGE_PASSWORD_ENV, check_tracking_server, redact, require_driver,
                        storage_with_password, url_secrets)

SECRET = "PLANTED-s3cret"

REDACTIONS = [
    ("postgresql://segft:s3cret@db.example.org:5432/optuna", "postgresql://segft:***@db.example.org:5432/optuna"),
    ("postgresql://db/optuna?password=s3cret&sslmode=require", "postgresql://db/optuna?password=***&sslmode=require"),
    ("postgresql://segft@db/optuna?sslpassword=s3cret", "postgresql://segft@db/optuna?sslpassword=***"),
    ("http://user:s3cret@host:5000/api?token=s3cret&x=1#top", "http://user:***@host:5000/api?token=***&x=1#top"),
    # a '#' may be part of a query value (SQLAlchemy reads it so): hidden with it
    ("postgresql://db/optuna?password=s3c#ret", "postgresql://db/optuna?password=***"),
    ("storage=mysql+pymysql://u:s3cret@h/d and more", "storage=mysql+pymysql://u:***@h/d and more"),
    ("sqlite:////abs/path/optuna.db", "sqlite:////abs/path/optuna.db"),
    ("sqlite:///optuna.db?timeout=30", "sqlite:///optuna.db?timeout=30"),
    ("no url at all", "no url at all"),
    # issue 22: quotes, spaces, '@', '/', '#' in the password; the user name and the host stay
    ("postgresql://user:se'cretpw@127.0.0.1:1/db", "postgresql://user:***@127.0.0.1:1/db"),
    ("postgresql://user:p@ss w/o#rd\"@h/db", "postgresql://user:***@h/db"),
    ("storage 'postgresql://u:s3cret@h/db': cannot open it (x)",
     "storage 'postgresql://u:***@h/db': cannot open it (x)"),
    ("two: postgresql://a:s3cret@h1/db and mysql://b:s3cret@h2/db",
     "two: postgresql://a:***@h1/db and mysql://b:***@h2/db"),
    # what redact wrote stays as it is, and so does the text after it
    ("storage 'postgresql://u:***@h/db': failed, ask dba@example.org",
     "storage 'postgresql://u:***@h/db': failed, ask dba@example.org"),
    ("storage 'sqlite:///x.db?password=***': cannot open it (a&b)",
     "storage 'sqlite:///x.db?password=***': cannot open it (a&b)"),
    # a URI after a URL ends its stretch: a model alias is no user info
    ("tracking http://127.0.0.1:5000: models:/segft-finetuned@champion not found",
     "tracking http://127.0.0.1:5000: models:/segft-finetuned@champion not found"),
    ("give postgresql://<user>@<host>/<db> or unset it", "give postgresql://<user>@<host>/<db> or unset it"),
    ("file:///a/b@c/d", "file:///a/b@c/d"),
    # too much rather than too little: a later '@' in the same stretch widens what is hidden
    ("api http://h:5000/x failed: user@h", "api http://h:***@h"),
]


@pytest.mark.parametrize("text, expected", REDACTIONS)
def test_redact_hides_passwords_in_userinfo_and_query_strings(text, expected):
    assert redact(text) == expected


#: Passwords with every character a URL parser could stop at; ``AAA`` and ``ZZZ`` mark its two ends.
PASSWORDS = {
    "quote": "AAA'ZZZ", "double-quote": 'AAA"ZZZ', "both-quotes": "AAA'\"ZZZ", "space": "AAA ZZZ", "at": "AAA@ZZZ",
    "two-ats": "AAA@@ZZZ", "colon": "AAA:ZZZ", "percent": "AAA%ZZZ", "hash": "AAA#ZZZ", "slash": "AAA/ZZZ",
    "question": "AAA?ZZZ", "ampersand": "AAA&ZZZ", "angle-brackets": "AAA<>ZZZ", "backslash": "AAA\\ZZZ",
    "unicode": "AAAüß€ZZZ", "percent-encoded": quote("AAA@:/# 'ZZZ", safe=""), "url-inside": "AAA://x@ZZZ",
    "uri-after-space": "AAA http://x@ZZZ", "uri-after-quote": "AAA'models:/x@ZZZ", "stars": "***AAA@ZZZ",
    "port-like": "5000AAA/ZZZ", "everything": "AAA 'ü\"@:/%#?&ZZZ",
}
#: Where a URL appears: alone (a param, a tag, a printed storage), and in lines segft or a library prints.
FORMS = {
    "alone": "{url}",
    "repr": "storage {url!r}: cannot open it (connection refused)",
    "double-quoted": 'could not connect to "{url}"; is it up? ask admin@example.org',
    "bare": "API request to {url}/api/2.0/mlflow/runs/create failed with exception x",
    "after-equals": "storage={url} and more",
    "with-alias-after": "tracking {url} holds no models:/segft-finetuned@champion",
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("password", PASSWORDS)
def test_no_password_survives_redaction_however_it_is_written(password, form):
    url = f"postgresql+psycopg://segft:{PASSWORDS[password]}@db.example.org:5432/optuna"
    text = FORMS[form].format(url=url)
    hidden = redact(text)
    assert "AAA" not in hidden and "ZZZ" not in hidden, hidden
    assert "postgresql+psycopg://segft:***@" in hidden, hidden
    assert redact(hidden) == hidden  # what redact wrote is left as it is


@pytest.mark.parametrize("password", PASSWORDS)
def test_no_query_string_password_survives_redaction(password):
    for text in (f"sqlite:///optuna.db?password={PASSWORDS[password]}",
                 f"see 'postgresql://db/optuna?sslmode=require&sslpassword={PASSWORDS[password]}&x=1' now"):
        assert "AAA" not in redact(text) and "ZZZ" not in redact(text), redact(text)


#: (URLs segft was given, a library's message quoting a piece of one outside any URL, what must not survive)
KNOWN_SECRETS = [
    # SQLAlchemy cuts the password at its first '@'; psycopg then cannot resolve the "host" holding the rest
    ([f"postgresql+psycopg://segft:se'c r@{SECRET}@127.0.0.1:1/optuna"],
     f"failed to resolve host '{SECRET}@127.0.0.1': Name or service not known", SECRET),
    ([f"http://segft:{quote(SECRET + '@x')}@127.0.0.1:5000"], f"login {SECRET}@x refused", SECRET),
    ([f"sqlite:///optuna.db?password={SECRET}", ""], f"bad value {SECRET!r}", SECRET),
]


@pytest.mark.parametrize("urls, message, secret", KNOWN_SECRETS)
def test_the_secrets_of_a_given_url_are_hidden_outside_any_url(urls, message, secret):
    assert secret in message and secret not in redact(message, url_secrets(*urls))
    assert url_secrets("http://127.0.0.1:5000", "postgresql://segft@db/optuna", "") == ()
    assert redact("a b c", url_secrets("postgresql://u:a@h")) == "a b c"  # too short a piece to hide


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


#: A PostgreSQL password with what broke ``redact`` (issue 22): quotes, a space, ``#``, ``/``, ``?``, ``:``, non-ASCII
#: and an ``@`` (percent-encoded in the URL, as SQLAlchemy needs it).
AWKWARD_PASSWORD = f"se'c\"r t#/?:ü@{SECRET}"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL server on loopback (its own process group, ended as a whole), with a role ``segft``
    whose password is ``AWKWARD_PASSWORD`` and a database ``optuna``; yields its port."""
    import glob
    import os
    import shutil
    import signal
    import subprocess
    import tempfile
    from pathlib import Path

    from conftest import free_port

    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if not initdb:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    binaries = Path(initdb).resolve().parent
    root = Path(tempfile.mkdtemp(prefix="segft-pg-"))  # PostgreSQL refuses to run as root: as postgres then
    root.chmod(0o777)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, str(binaries / "initdb"), "-D", str(root / "data"), "-U", "admin",
                    "--auth-local=trust", "--auth-host=scram-sha-256"], check=True, capture_output=True)
    port = free_port()
    log = open(root / "log", "w")
    server = subprocess.Popen([*as_postgres, str(binaries / "postgres"), "-D", str(root / "data"), "-p", str(port),
                               "-k", str(root), "-c", "listen_addresses=127.0.0.1"], stdout=log, stderr=log,
                              start_new_session=True)
    psql = ["psql", "-h", str(root), "-p", str(port), "-U", "admin", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    try:
        for _ in range(100):
            if subprocess.run([*psql, "select 1"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        password = AWKWARD_PASSWORD.replace("'", "''")
        subprocess.run([*psql, f"create role segft login password '{password}'"], check=True, capture_output=True)
        subprocess.run([*psql, "create database optuna owner segft"], check=True, capture_output=True)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _tune(storage: str, data) -> int:
    return cli.main(["tune", "--target", "base", "--n-trials", "1", "--storage", storage, "--data-dir", str(data),
                     "--epochs", "1", "--batch-size", "16", "--patch-size", "64", "--encoder", "resnet18",
                     "--encoder-depth", "3", "--decoder-channels", "16,8,4", "--dataset1-train-images", "3",
                     "--dataset2-pool-images", "3"])


def _files_holding(secret: str, store, tmp_path, at_least: int) -> list[str]:
    """Every file of the tracking store that holds ``secret``: the SQLite database (runs, params, tags, metrics,
    model registry) and every artifact file of every experiment."""
    from pathlib import Path
    from urllib.parse import urlparse

    runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
    roots = {Path(urlparse(run.info.artifact_uri).path).parents[1] for run in runs}  # experiment folders
    files = [tmp_path / "mlflow.db", *(p for root in roots for p in root.rglob("*") if p.is_file())]
    assert len(files) >= at_least
    return [str(path) for path in files if secret.encode() in path.read_bytes()]


@pytest.mark.slow
def test_a_planted_storage_secret_is_nowhere_in_the_tracking_store(store, tmp_path, capsys):
    """Tune with a password in the storage URL's query string, then search every byte of the store."""
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
    assert _files_holding(SECRET, store, tmp_path, at_least=10) == []


@pytest.mark.slow
def test_an_awkward_user_info_password_is_nowhere_in_print_params_tags_or_files(postgres, store, tmp_path, capsys):
    """Issue 22: a real tuning study in a real PostgreSQL, its password in the URL's user info with quotes, a space,
    ``#``, ``/``, ``?``, ``:``, non-ASCII and an encoded ``@``; first with a wrong password (the error line), then
    the right one (what it prints, the parent's and trial's params and tags, every file of the store)."""
    from segft.data.synthetic import make_microtube_study, write_study

    data = write_study(make_microtube_study(n_images=4), tmp_path / "data")
    url = "postgresql+psycopg://segft:{}@127.0.0.1:%d/optuna" % postgres
    assert _tune(url.format(AWKWARD_PASSWORD.replace("@", "%40") + "-wrong"), data) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"'postgresql+psycopg://segft:***@127.0.0.1:{postgres}/optuna'" in line and "authentication" in line
    assert SECRET not in line
    status = _tune(url.format(AWKWARD_PASSWORD.replace("@", "%40")), data)
    printed = capsys.readouterr()
    assert status == 0, printed.err[-3000:]
    assert SECRET not in printed.out + printed.err and quote(SECRET) not in printed.out + printed.err
    runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert {run.data.params.get("storage") for run in runs} >= {url.format("***")}
    for run in runs:
        assert SECRET not in str(run.data.params) + str(run.data.tags), run.info.run_name
    assert _files_holding(SECRET, store, tmp_path, at_least=5) == []


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """Start a loopback HTTP server answering every GET with the status given; yields a starter."""
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (_Answer,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield listening.getsockname()[1]


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize("status", [200, 401, 403, 404])
def test_a_tracking_server_that_answers_passes_the_probe(http_server, status):
    check_tracking_server(http_server(status) + "/", "MLFLOW_TRACKING_URI", timeout=2)
    check_tracking_server(http_server(status).replace("http://", f"http://segft:{SECRET}@") + "/mlflow", "x")


@pytest.mark.parametrize("uri", ["", "sqlite:///mlflow.db", "postgresql://u:p@127.0.0.1:1/db", "file:///tmp/mlruns",
                                 "/tmp/mlruns", "databricks"])
def test_other_tracking_uris_are_not_probed(uri):
    check_tracking_server(uri, "MLFLOW_TRACKING_URI", timeout=0.5)


PROBE_FAILURES = {
    "nothing-listens": (lambda port, server: f"http://segft:{SECRET}@127.0.0.1:{_refused_port()}/", "refused"),
    "never-answers": (lambda port, server: f"http://segft:{SECRET}@127.0.0.1:{port}", "no answer within 1 s"),
    "proxy-before-a-dead-server": (lambda port, server: server(503).replace("//", f"//segft:{SECRET}@"), "HTTP 503"),
    "unknown-host": (lambda port, server: f"https://segft:{SECRET}@no-such-host.invalid:5000", "MLFLOW_TRACKING_URI"),
}


@pytest.mark.parametrize("name", PROBE_FAILURES)
def test_a_tracking_server_that_does_not_answer_is_refused_in_one_line(name, silent_port, http_server):
    make_uri, reason = PROBE_FAILURES[name]
    started = time.monotonic()
    with pytest.raises(ValueError) as refused:
        check_tracking_server(make_uri(silent_port, http_server), "MLFLOW_TRACKING_URI", timeout=1)
    message = str(refused.value)
    assert time.monotonic() - started < 3
    assert reason in message and "MLFLOW_TRACKING_URI 'http" in message and "segft:***@" in message, message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize("command", cli.TRACKING_COMMANDS)
def test_every_tracking_command_checks_the_tracking_server_first(command, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://segft:{SECRET}@127.0.0.1:{_refused_port()}/")
    assert cli.main([command]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("segft: error: MLFLOW_TRACKING_URI 'http://segft:***@127.0.0.1:") and SECRET not in line


def test_an_unreachable_tracking_server_ends_a_command_in_one_line_within_ten_seconds(silent_port):
    """Issue 22: MLflow retried for over 3 minutes with nothing printed. A real process, imports included, against a
    port that accepts connections and never answers (the slowest case: the probe's whole timeout)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://segft:{SECRET}@127.0.0.1:{silent_port}/"}
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", "segft", "base"], env=env, capture_output=True, text=True,
                               timeout=60)
    elapsed = time.monotonic() - started
    assert completed.returncode == 2 and elapsed < 10, (elapsed, completed.stderr[-2000:])
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("segft: error: MLFLOW_TRACKING_URI 'http://segft:***@127.0.0.1:") and SECRET not in line
