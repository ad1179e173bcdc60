"""What segft knows about URLs: hiding their secrets, adding a password from the environment, checking that
the database driver a URL needs is installed.

Every value segft writes to MLflow (params, tags) or prints passes through ``redact``, so a password given in a
storage or tracking URL (``postgresql://user:secret@host/db``, ``...?password=secret``) never reaches the store
or a log. MLflow itself logs and prints ``mlflow run -P`` values before segft runs, so the README tells users to
give a storage password in ``SEGFT_STORAGE_PASSWORD`` (``storage_with_password``) or in PostgreSQL's own
``PGPASSWORD`` / ``~/.pgpass``, never in the URL.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode

#: The environment variable ``tune`` reads a storage password from (instead of the URL, where it would be seen).
STORAGE_PASSWORD_ENV = "SEGFT_STORAGE_PASSWORD"
#: Query-string keys whose values are secrets (matched case-insensitively, as a part of the key).
SECRET_KEYS = ("password", "passwd", "secret", "token", "apikey", "api_key", "access_key")
HIDDEN = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def redact(text: str) -> str:
    """``text`` with the secrets of every URL in it hidden: the password of ``user:password@`` and the value of
    every query parameter named like a secret (``password``, ``sslpassword``, ``token``...)."""
    return _URL.sub(lambda match: _redact_url(match.group(0)), text) if "://" in text else text


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, path = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':' + HIDDEN if colon else ''}@{host}"
    path, question, query = path.partition("?")
    query, hash_, fragment = query.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_is_secret(key) for key, _ in pairs):
        query = urlencode([(key, HIDDEN if _is_secret(key) else value) for key, value in pairs], safe="*/:")
    return f"{scheme}://{netloc}{path}{question}{query}{hash_}{fragment}"


def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_KEYS)


def storage_with_password(url: str) -> str:
    """``url`` with the password from ``SEGFT_STORAGE_PASSWORD`` when that is set (and the URL names a user).

    Raises:
        ValueError: If the variable is set but the URL names no user to give it to.
    """
    password = os.environ.get(STORAGE_PASSWORD_ENV)
    if not password:
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.username:
        raise ValueError(f"{STORAGE_PASSWORD_ENV} is set but storage {redact(url)!r} names no user; give "
                         "postgresql://<user>@<host>/<db> or unset it")
    return parsed.set(password=password).render_as_string(hide_password=False)


def require_driver(url: str, what: str) -> None:
    """Check that the Python driver a database URL needs is installed (before any training starts).

    Args:
        url: An SQLAlchemy-style database URL (``postgresql://...``, ``mysql+pymysql://...``); URLs of other
            kinds (``http://``, ``file:``, a path) need no driver and pass.
        what: The parameter the URL came from, named in the error (``storage``, ``MLFLOW_TRACKING_URI``).

    Raises:
        ValueError: In one line naming the missing package and how to install it.
    """
    from sqlalchemy.dialects import registry
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if not re.match(r"^(postgres|postgresql|mysql|mariadb|mssql|oracle|sqlite)(\+\w+)?://", url):
        return
    try:
        dialect = registry.load(make_url(url).get_backend_name() + "." + make_url(url).get_driver_name())
        dialect.import_dbapi()
    except (ArgumentError, NoSuchModuleError) as error:
        raise ValueError(f"{what} {redact(url)!r}: unknown database URL ({error})") from error
    except ImportError as error:
        package = getattr(error, "name", None) or str(error)
        hint = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}.get(package, package)
        raise ValueError(f"{what} {redact(url)!r} needs the database driver {package!r}, which is not installed"
                         f" (pip install '{hint}')") from error

