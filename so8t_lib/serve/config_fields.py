"""Field types the runtime config shares: a file's path and an environment variable's name. Each refuses a value
the runtime would quietly not honour: an empty ``service.emergency_flag_file`` (or one naming a folder) switched the
flag file off, an empty ``logging.encryption_key_env`` wrote the audit log unencrypted."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# libpq and psycopg wait at least this long for a connection to a PostgreSQL server, whatever connect_timeout says
PG_SHORTEST_CONNECT_S = 2


def _env_name(value: str) -> str:
    if not ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name (letters, digits and _, not starting with a "
                         "digit): a secret never lives in a config; put it in a variable and name the variable here, "
                         "or leave the key out")
    return value


def check_webhook_url(value: str, source: str) -> str:
    """``value`` unless it is not an http(s) URL with a host (urllib would open a file:, data: or ftp: URL and fail
    later with a meaningless error). The message never shows the URL: a webhook's path is its secret."""
    try:
        parts = urllib.parse.urlsplit(value.strip())
        scheme, host = parts.scheme.lower(), parts.hostname
    except ValueError:  # a malformed port or IPv6 literal
        scheme, host = None, None
    if scheme in ("http", "https") and host:
        return value
    got = ("a URL that cannot be read" if scheme is None else "no scheme" if not scheme else
           f"an {scheme}: URL with no host" if scheme in ("http", "https") else f"a {scheme}: URL")
    raise ValueError(f"{source} must be an http:// or https:// URL with a host, got {got}")


def _file_path(value: str) -> str:
    if not value.strip():
        raise ValueError("empty: name the file (a path ending in a file name); an empty path would make the runtime "
                         "read or write no file, and silently")
    if value.endswith(("/", "\\")) or Path(value).name in ("", ".", "..") or Path(value).is_dir():
        raise ValueError(f"{value!r} names a folder, not a file: name a file inside it (e.g. "
                         f"{value.rstrip('/')}/<file name>)")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]
FilePath = Annotated[str, AfterValidator(_file_path)]
WebhookUrl = Annotated[str, AfterValidator(lambda value: check_webhook_url(value, "the webhook URL"))]
