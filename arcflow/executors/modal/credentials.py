"""Where Modal will find a token, checked before anything is created.

Mirrors the lookup of Modal's own client, so that a missing or half-set token
is a clear start-up error naming what to set, not a failure deep in the first
sandbox creation.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError

MISSING_CREDENTIALS_HELP = (
    "Run `modal token new` (it opens a browser and writes ~/.modal.toml), or set both "
    "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (create a token at https://modal.com/settings/tokens)."
)


def find_modal_credentials(environ: Mapping[str, str] | None = None) -> str:
    """Where Modal will find a token: a description of the source.

    Mirrors Modal's own lookup: ``MODAL_TOKEN_ID`` and ``MODAL_TOKEN_SECRET``,
    else the profile (``MODAL_PROFILE``, else the active one, else
    ``default``) of ``MODAL_CONFIG_PATH`` or ``~/.modal.toml``.  Raises
    :class:`ConfigError` saying how to provide credentials when there are none.
    """
    environ = os.environ if environ is None else environ
    token_id = environ.get("MODAL_TOKEN_ID")
    token_secret = environ.get("MODAL_TOKEN_SECRET")
    if token_id and token_secret:
        return "the MODAL_TOKEN_ID and MODAL_TOKEN_SECRET environment variables"
    if token_id or token_secret:
        present, missing = (
            ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")
            if token_id
            else ("MODAL_TOKEN_SECRET", "MODAL_TOKEN_ID")
        )
        raise ConfigError(
            f"the modal: executor found {present} but not {missing} in the environment: "
            f"set both, or unset {present} to use ~/.modal.toml. {MISSING_CREDENTIALS_HELP}"
        )
    if environ.get("MODAL_OAUTH_REFRESH_TOKEN"):
        return "the MODAL_OAUTH_* environment variables"
    path = environ.get("MODAL_CONFIG_PATH") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".modal.toml"
    )
    profiles = _read_modal_toml(path)
    active = [name for name, values in profiles.items() if values.get("active") is True]
    name = environ.get("MODAL_PROFILE") or (active[0] if active else "default")
    profile = profiles.get(name, {})
    if (profile.get("token_id") and profile.get("token_secret")) or profile.get(
        "oauth_refresh_token"
    ):
        return f"profile {name!r} of {path}"
    where = f"no profile {name!r} with a token in {path}" if profiles else f"no {path}"
    raise ConfigError(
        "the modal: executor needs Modal credentials and found none "
        f"(no MODAL_TOKEN_ID/MODAL_TOKEN_SECRET in the environment, {where}). "
        f"{MISSING_CREDENTIALS_HELP}"
    )


def _read_modal_toml(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read Modal config {path}: {exc}") from exc
    return {key: value for key, value in data.items() if isinstance(value, dict)}
