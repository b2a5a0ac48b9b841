"""Which API this process talks to: the live service, or the built-in simulator.

Owns: the choice (an API key means live unless `--simulate`; no key means the
simulator, said loudly by the CLI), the ledger side it implies (`env` "live" or
"sim"), and building the two HTTP clients every run needs:

- the API client, which carries `Authorization` and is pinned to the API's
  origin; it never follows redirects, so the header cannot travel elsewhere;
- the files client, which carries no credentials at all and may follow
  redirects, because output videos live on other hosts (CDNs, buckets). It is
  a plain httpx client on httpx's own transport, so it honours the
  environment's proxy settings as httpx does.

With the simulator, both clients speak to the same in-process ASGI app through
`httpx.ASGITransport`: no socket, no port, same code path as live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mvbatch import logs
from mvbatch.errors import ConfigError
from mvbatch.settings import Settings

SIM_BASE_URL = "http://simulator.mvbatch.invalid/api/v1"
SIM_API_KEY = "mv_sim_local"
USER_AGENT = "mvbatch/0.1"


@dataclass(frozen=True)
class Endpoint:
    env: str  # "live" or "sim": the side of the ledger
    base_url: str
    api_key: str = field(repr=False)  # never in a repr, a log line or a traceback
    transport: httpx.AsyncBaseTransport | None = None

    @property
    def simulated(self) -> bool:
        return self.env == "sim"

    def api_client(self, timeout: float = 30.0, max_connections: int = 64) -> httpx.AsyncClient:
        """The HTTP client for `ApiClient`: the key, the API's origin, no redirects followed.

        `timeout` bounds each request; trying again is `mvbatch.api.retry`'s.
        The key is registered for redaction here, where it is put in a header,
        so that no server echo of it is ever stored, whoever built the endpoint.
        """
        if not self.simulated:
            logs.register_secret(self.api_key)
        return httpx.AsyncClient(
            base_url=self.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {self.api_key}", "User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            transport=self.transport,
        )

    def files_client(self, timeout: float = 60.0, max_connections: int = 16) -> httpx.AsyncClient:
        # No Authorization: the Downloader refuses a client that carries one.
        return httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=True,
            transport=self.transport,
        )


def choose(
    settings: Settings,
    simulate: bool | None,
    sim_state_dir: Path | None = None,
    sim_speed: float = 1.0,
    sim_faults: str = "none",
) -> Endpoint:
    """`simulate`: True for --simulate, False for --live, None when neither was given."""
    key = settings.api_key_value()
    if simulate is False and key is None:
        raise ConfigError(
            "--live needs an API key: set MINDVIDEO_API_KEY "
            "(or drop --live to try the built-in simulator)"
        )
    if simulate is True or key is None:
        # Imported here for start-up speed: a live run never loads the
        # simulator (Starlette, its data files).
        from mvbatch.sim.app import create_app
        from mvbatch.sim.config import build_config

        config = build_config(
            faults=sim_faults,
            speed=sim_speed,
            state_dir=sim_state_dir or settings.state_dir / "sim",
        )
        transport = httpx.ASGITransport(app=create_app(config))
        return Endpoint("sim", SIM_BASE_URL, SIM_API_KEY, transport)
    return Endpoint("live", settings.api_base_url(), key)
