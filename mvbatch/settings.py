"""Settings from the environment (and a `.env` file), named as in the contract.

A `.env` file in the working directory is read too (environment variables win
over it), so `key_source()` says where the API key came from: a stray `.env`
must never turn a simulated run into a live one unannounced.

The API key is a `SecretStr` so that printing or logging the settings object
never shows it; call `api_key_value()` only where the header is built.

`MINDVIDEO_BASE_URL` is checked once, where a live API is chosen
(`api_base_url()`): an http(s) URL with a host, a valid port, and nothing a
secret could hide in (no user name, password, query or fragment). Anything
else is a `ConfigError` (exit 4) that names the variable and the reason, so a
typo never reaches httpx as a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mvbatch.errors import ConfigError

DEFAULT_BASE_URL = "https://api.mindvideo.ai/api/v1"
ENV_FILE = Path(".env")
KEY_VARIABLE = "MINDVIDEO_API_KEY"
SIM_SPEED_VARIABLE = "MVBATCH_SIM_SPEED"


class Settings(BaseSettings):
    # Only the contract's names are read, from the environment, a `.env` or
    # keyword arguments (`Settings(MVBATCH_STATE_DIR=...)`): a bare `BASE_URL`
    # or `API_KEY` meant for another program must never send our key to its
    # host or turn a simulated run into a paid one.
    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore")

    api_key: SecretStr | None = Field(default=None, validation_alias="MINDVIDEO_API_KEY")
    base_url: str = Field(default=DEFAULT_BASE_URL, validation_alias="MINDVIDEO_BASE_URL")
    state_dir: Path = Field(default=Path("state"), validation_alias="MVBATCH_STATE_DIR")
    output_dir: Path = Field(default=Path("outputs"), validation_alias="MVBATCH_OUTPUT_DIR")
    # Where the ledger is: a SQLite file, or a PostgreSQL URL that a fleet of
    # workers shares. Secret: a URL may hold a database password.
    ledger: SecretStr | None = Field(default=None, validation_alias="MVBATCH_LEDGER")
    # How long a worker holds a task in flight without a heartbeat before
    # another worker may take it over (a fleet on one ledger).
    lease_seconds: float = Field(
        default=30.0, gt=0, le=3600, allow_inf_nan=False, validation_alias="MVBATCH_LEASE_SECONDS"
    )
    # Divides the built-in simulator's latencies (0: tasks end when created);
    # the demo runs at 1, tests at 0.
    sim_speed: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        validation_alias=SIM_SPEED_VARIABLE,
    )

    def key_source(self) -> str | None:
        """Where the API key came from ("the environment" or a `.env` path), never the key."""
        if self.api_key_value() is None:
            return None
        if os.environ.get(KEY_VARIABLE, "").strip():
            return "the environment"
        return str(ENV_FILE.resolve())

    def ledger_location(self) -> str | Path:
        """The ledger to open: MVBATCH_LEDGER (a SQLite path or a postgresql:// URL), else
        the state folder's `ledger.sqlite` (given as the folder)."""
        if self.ledger is not None and self.ledger.get_secret_value().strip():
            value = self.ledger.get_secret_value().strip()
            return value if "://" in value else Path(value).expanduser()
        return self.state_dir

    def api_key_value(self) -> str | None:
        if self.api_key is None:
            return None
        value = self.api_key.get_secret_value().strip()
        return value or None

    def api_base_url(self) -> str:
        """MINDVIDEO_BASE_URL, checked: `ConfigError` (exit 4) saying what is wrong with it."""
        value = self.base_url.strip()
        problem = base_url_problem(value)
        if problem is not None:
            raise ConfigError(
                f"MINDVIDEO_BASE_URL {problem}; got {_shown(value)!r}",
                hint=f"set it to the API's base URL, e.g. {DEFAULT_BASE_URL}, or unset it",
            )
        return value


def _shown(value: str) -> str:
    """A base URL for a message: without what may be secret (user info, query, fragment)."""
    import httpx  # here, not at the top: `mvbatch --help` imports settings, never httpx

    try:
        url = httpx.URL(value)
        value = str(url.copy_with(username=None, password=None, query=None, fragment=None))
    except httpx.InvalidURL:
        pass
    return value if len(value) <= 100 else value[:99] + "…"


def base_url_problem(value: str) -> str | None:
    """What keeps `value` from being the task API's base URL, or None if nothing does.

    Parsed by httpx itself, so what passes here is what the client will send to.
    """
    import httpx  # here, not at the top: `mvbatch --help` imports settings, never httpx

    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as error:
        return f"is not a URL ({error})"
    if url.scheme not in ("http", "https"):
        return "must be an http(s) URL, such as https://host/api/v1"
    if not url.host or any(c in url.host for c in "% ") or not url.host.isprintable():
        return "has no valid host name"
    if url.port is not None and not 0 < url.port < 65536:
        return f"has an invalid port ({url.port})"
    if url.userinfo:
        return "must not carry a user name or password (the key goes in MINDVIDEO_API_KEY)"
    if url.query or url.fragment:
        return "must not have a query or a fragment (the key goes in MINDVIDEO_API_KEY)"
    return None


def load_settings() -> Settings:
    return Settings()
