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
from typing import Iterable

#: The environment variable ``tune`` reads a storage password from (instead of the URL, where it would be seen).
STORAGE_PASSWORD_ENV = "SEGFT_STORAGE_PASSWORD"
#: Query-string keys whose values are secrets (matched case-insensitively, as a part of the key).
SECRET_KEYS = ("password", "passwd", "secret", "token", "apikey", "api_key", "access_key")
HIDDEN = "***"
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*"
#: Where a URL starts: a scheme and ``://``, not in the middle of a word.
_URL_START = re.compile(rf"(?<![A-Za-z0-9+.\-]){_SCHEME}://")
#: Where another URI starts in free text (``http://``, ``models:/``): after whitespace, a quote, a bracket or ``,;=``.
_NEXT_URI = re.compile(rf"[\s'\"<>()\[\]{{}},;=]{_SCHEME}:/")
#: A user info hidden already (``user:***@``) and followed by a host: the text ``redact`` wrote itself.
_HIDDEN_USERINFO = re.compile(rf"[^:]*:{re.escape(HIDDEN)}(?=@[^\s/?#@'\"<>]*(?:[/?#\s'\"<>),;]|$))")
#: What can follow the ``@`` of a user info: a host (a name, an address, ``[IPv6]``), perhaps a port, then the end of
#: the authority; or no host at all before a path (``postgresql://user:password@/db?host=/run/postgresql``).
_HOST = re.compile(r"(?:(?:[^\s/?#@'\"<>()\[\]{},;:]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?(?=[/?#\s'\">)\]},;]|$)|(?=/))")
#: ``host:port`` where the port is not a number: a ``user:password`` whose ``@`` lies beyond what looked like the
#: start of another URI.
_NOT_A_PORT = re.compile(r"[^:/?#@\s'\"]*:(?![0-9]+(?:[/?#\s'\"<>),;:]|$))[^:/?#\s'\"]")
#: A query-string key (``?password=``, ``&sslpassword=``) and where its value starts.
_QUERY_KEY = re.compile(r"[?&;]([^=&?#\s'\"]*)=")
#: Where the next ``key=value`` pair of a query string starts.
_NEXT_PAIR = re.compile(r"&[^=&?#\s'\"]*=")
#: A query value hidden already (``password=***``), the text ``redact`` wrote itself.
_HIDDEN_VALUE = re.compile(rf"{re.escape(HIDDEN)}(?=[&#\s'\"<>),;]|$)")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the secrets of every URL in it hidden: the password of ``user:password@`` and the value of
    every query parameter named like a secret (``password``, ``sslpassword``, ``token``...); and every one of
    ``secrets`` (``url_secrets``: what segft knows to be secret) wherever it appears.

    A password may hold any character, quoted, escaped or not (``'``, ``"``, spaces, ``@``, ``:``, ``/``, ``#``,
    ``%``, non-ASCII), and ``text`` may be a URL alone (a parameter, a tag) or free text holding URLs (an error
    message), so no URL parser can be trusted to find where it ends; the rule is written for hiding too much rather
    than too little:

    - a URL starts at ``<scheme>://``; it reaches to the next URI that starts after whitespace, a quote, a bracket
      or ``,;=`` (``... and http://...``, ``'models:/...``), else to the end of ``text``; a URL at the start of
      ``text`` reaches to its end;
    - its user info reaches to the **last** ``@`` in that stretch (``user:p@ss@host`` hides ``p@ss``, and every
      ``@`` of later text, an e-mail address say, widens what is hidden); when no host can follow that ``@``
      (``user:a@ 'b``), or the stretch has none but reads ``user:word`` with a ``word`` that is no port number, the
      stretch runs on over the next URI (the password held a space or a quote and something like a URI:
      ``user:a http://b@host``);
    - everything after the user info's first ``:`` is the password, replaced by ``***``; the user name stays
      (a "user name" holding ``/``, ``?`` or ``#`` is no user name: the URL has no user info);
    - the value of a query key named like a secret (``SECRET_KEYS``) reaches to the next ``&key=``, else to the
      end of ``text``, a ``#``, a space or a URI included (SQLAlchemy reads a ``#`` as part of the value).

    ``user:***@host`` and ``password=***`` are left as they are, so ``redact`` of its own output changes nothing.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    if "://" not in text:
        return text
    pieces, position = [], 0
    for start in _URL_START.finditer(text):
        if start.start() < position:  # inside the password of the URL before
            continue
        pieces.append(text[position : start.end()])
        position = start.end()
        following = _NEXT_URI.search(text, position) if start.start() > 0 else None
        end = following.start() if following else len(text)
        at = _end_of_userinfo(text, position, end)
        user, colon, _ = text[position:at].partition(":") if at is not None else ("", "", "")
        if colon and not re.search(r"[/?#]", user):  # a user name never holds these: the host came first
            pieces.append(f"{user}:{HIDDEN}")
            position = at
        piece, position = _hide_query_secrets(text, position, max(end, position))
        pieces.append(piece)
    pieces.append(text[position:])
    return "".join(pieces)


#: Shortest piece of a secret ``url_secrets`` lists: shorter ones would hide ordinary words of a message.
MIN_SECRET_PIECE = 4
#: Where a URL parser may cut a password or a secret query value into pieces.
_CUTS = re.compile(r"[@:/?#&\s'\"\\]+")


def url_secrets(*urls: str) -> tuple[str, ...]:
    """The secrets of URLs segft was given (a storage, a tracking URI), and the pieces a parser may cut them into,
    to be hidden wherever they appear (``redact(text, secrets)``).

    A library can quote a piece of a password outside any URL: SQLAlchemy cuts ``user:a b@c@host`` at its first
    ``@``, and psycopg then fails to resolve the host ``'c@host'``. So every secret is listed whole, percent-decoded,
    and cut at ``@ : / ? # &``, whitespace, quotes and backslashes, pieces shorter than ``MIN_SECRET_PIECE`` left
    out.
    """
    from urllib.parse import unquote

    found = set()
    for url in urls:
        for secret in _secrets_of(url.strip()):
            for whole in {secret, unquote(secret)}:
                found.update(piece for piece in [whole, *_CUTS.split(whole)] if len(piece) >= MIN_SECRET_PIECE)
    return tuple(sorted(found - {HIDDEN}))


def _secrets_of(url: str) -> list[str]:
    """What ``redact`` hides in ``url``, a URL alone: its password and its secret query values."""
    start = _URL_START.match(url)
    if not start:
        return []
    secrets, position = [], start.end()
    at = _end_of_userinfo(url, position, len(url))
    user, colon, password = url[position:at].partition(":") if at is not None else ("", "", "")
    if colon and not re.search(r"[/?#]", user):
        secrets.append(password)
        position = at
    for key in _QUERY_KEY.finditer(url, position):
        following = _NEXT_PAIR.search(url, key.end())
        if _is_secret(key.group(1)):
            secrets.append(url[key.end() : following.start() if following else len(url)])
    return secrets


def _end_of_userinfo(text: str, start: int, end: int) -> int | None:
    """Where the user info of the URL whose authority starts at ``start`` ends (its ``@``), or None when it has
    none; ``end`` is where the URL's stretch of ``text`` ends (see ``redact``)."""
    hidden = _HIDDEN_USERINFO.match(text, start, end)
    if hidden:
        return hidden.end()
    while end < len(text):  # until the last '@' is followed by a host, or no '@' is needed
        at = text.rfind("@", start, end)
        if at != -1 and _HOST.match(text, at + 1) or at == -1 and not _NOT_A_PORT.match(text, start, end):
            break
        following = _NEXT_URI.search(text, end + 1)  # the password ran into what looked like another URI
        end = following.start() if following else len(text)
    at = text.rfind("@", start, end)
    return at if at != -1 else None


def _hide_query_secrets(text: str, start: int, end: int) -> tuple[str, int]:
    """``text[start:end]`` (a URL after its user info) with the value of every query key named like a secret
    hidden, and where that piece ended: a secret value runs on to the next ``&key=``, or to the end of ``text``
    (past ``end``: it may hold a space and something like a URI)."""
    pieces, position = [], start
    for key in _QUERY_KEY.finditer(text, start, end + 1):  # ``end`` may be the ``=`` before a value like a URI
        if key.start() < position or not _is_secret(key.group(1)):
            continue
        hidden = _HIDDEN_VALUE.match(text, key.end())
        following = _NEXT_PAIR.search(text, key.end())
        pieces += [text[position : key.end()], HIDDEN]
        position = hidden.end() if hidden else following.start() if following else len(text)
    end = max(end, position)
    return "".join(pieces) + text[position:end], end


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
    if not re.match(r"^(postgres|postgresql|mysql|mariadb|mssql|oracle|sqlite)(\+\w+)?://", url):
        return
    from sqlalchemy.dialects import registry
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

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



#: Seconds ``check_tracking_server`` waits for an http(s) tracking server to answer.
PROBE_TIMEOUT_S = 5.0


def check_tracking_server(uri: str, what: str = "MLFLOW_TRACKING_URI", timeout: float = PROBE_TIMEOUT_S) -> None:
    """Check that an http(s) tracking server answers at all, before any work starts.

    MLflow's own client retries a refused or silent connection for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
    with backoff) before it says anything; this is one request to ``<uri>/health``, no retries. Any HTTP answer
    below 500 passes (a 401 or a 404 too: MLflow itself reports those at once, and they prove a server is there),
    and so does a TLS failure (``MLFLOW_TRACKING_INSECURE_TLS`` and MLflow's certificate settings are MLflow's
    to apply). URIs of other kinds (a database, a folder) pass.

    Args:
        uri: A tracking URI (``http://host:5000``, ``https://user:password@host/mlflow``, ``sqlite:///...``).
        what: Where the URI came from, named in the error.
        timeout: Seconds to wait for the connection and for the answer.

    Raises:
        ValueError: In one line naming ``what``, the URI (password hidden) and why, when nothing answers.
    """
    import socket
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    if uri.strip().partition("://")[0].lower() not in ("http", "https"):
        return
    parts = urlsplit(uri.strip())
    host = parts.netloc.rpartition("@")[2]  # user info off: the probe needs no credentials
    probe = urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code < 500:
            return
        reason = f"HTTP {error.code} {error.reason}"  # a proxy before a server that is down: MLflow retries 5xx
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):
            return
        if isinstance(reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:g} s"
    raise ValueError(f"{what} {redact(uri)!r}: no tracking server answers there ({reason}); start it, or check the "
                     "address and port")
