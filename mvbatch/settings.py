"""Settings from the environment (and a `.env` file), named as in the contract.

A `.env` file in the working directory is read too (environment variables win
over it), so `key_source()` says where the API key came from: a stray `.env`
must never turn a simulated run into a live one unannounced.

The API key is a `SecretStr` so that printing or logging the settings object
never shows it; call `api_key_value()` only where the header is built.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://api.mindvideo.ai/api/v1"
ENV_FILE = Path(".env")
KEY_VARIABLE = "MINDVIDEO_API_KEY"
SIM_SPEED_VARIABLE = "MVBATCH_SIM_SPEED"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MINDVIDEO_API_KEY", "api_key")
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL, validation_alias=AliasChoices("MINDVIDEO_BASE_URL", "base_url")
    )
    state_dir: Path = Field(
        default=Path("state"), validation_alias=AliasChoices("MVBATCH_STATE_DIR", "state_dir")
    )
    output_dir: Path = Field(
        default=Path("outputs"), validation_alias=AliasChoices("MVBATCH_OUTPUT_DIR", "output_dir")
    )
    # Divides the built-in simulator's latencies (0: tasks end when created);
    # the demo runs at 1, tests at 0.
    sim_speed: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        validation_alias=AliasChoices(SIM_SPEED_VARIABLE, "sim_speed"),
    )

    def key_source(self) -> str | None:
        """Where the API key came from ("the environment" or a `.env` path), never the key."""
        if self.api_key_value() is None:
            return None
        if os.environ.get(KEY_VARIABLE, "").strip():
            return "the environment"
        return str(ENV_FILE.resolve())

    def api_key_value(self) -> str | None:
        if self.api_key is None:
            return None
        value = self.api_key.get_secret_value().strip()
        return value or None


def load_settings() -> Settings:
    return Settings()
