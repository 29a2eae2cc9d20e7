"""The Retarus clients of a running bridge: the Fax4A client (rebuilt when the
[retarus] section changes on reload) and one Fax2WSPull client per topic poller,
plus what jobs tell Retarus about our status push webhook."""

from __future__ import annotations

import httpx

from faxbridge.config import Topic
from faxbridge.errors import ConfigError
from faxbridge.retarus.fax4a import Fax4AClient, Fax4AEndpoints, make_client
from faxbridge.retarus.pull import PullClient
from faxbridge.runtime.config import ConfigProvider

SIM_PASSWORD = "simulator"  # the embedded simulator's own credentials; never a real secret


class RetarusClients:
    def __init__(self, config: ConfigProvider, sim_url: str | None = None,
                 push_secret: str | None = None) -> None:
        self.config = config
        self.sim_url = sim_url            # the embedded simulator's base URL, if any
        # The status push secret: configured, or (simulator) random per run.
        self.push_secret = push_secret
        self.webhook_url: str | None = None  # our /retarus/push (set once HTTP listens)
        self._fax4a: Fax4AClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._old_http: list[httpx.AsyncClient] = []

    @property
    def fax4a(self) -> Fax4AClient:
        assert self._fax4a is not None, "connect() first"
        return self._fax4a

    def connect(self) -> None:
        """(Re)build the Fax4A client from the current config; a replaced client is
        closed at aclose(), so requests in flight on it finish."""
        cfg = self.config.current
        password = cfg.retarus.password.resolve() or (
            SIM_PASSWORD if cfg.retarus.mode == "simulator" else None)
        if password is None:  # the preflight catches this first; never a traceback
            raise ConfigError(["retarus.password: no password in live mode (set "
                               "retarus.password.env or retarus.password.file)"])
        if self._http is not None:
            self._old_http.append(self._http)
        self._http = make_client(cfg.retarus.username, password, cfg.retarus.timeout)
        self._fax4a = Fax4AClient(
            Fax4AEndpoints(cfg.retarus.customer_number, cfg.send_url(self.sim_url),
                           cfg.datacenter_urls(self.sim_url)), self._http)

    def pull_client(self, topic: Topic) -> PullClient:
        """A Fax2WSPull client for one topic (its poller owns and closes it)."""
        cfg = self.config.current
        base = topic.url or f"{self.sim_url}/faxin/rest/v1"
        password = topic.password.resolve()
        if password is None and cfg.retarus.mode == "simulator":
            password = SIM_PASSWORD
        return PullClient(base, topic.customer_number, password or "",
                          timeout=cfg.retarus.timeout)

    def polls(self, topic: Topic) -> bool:
        """Whether a topic has anywhere to poll (its URL, or the embedded simulator)."""
        return bool(topic.url or self.sim_url)

    def push_url(self) -> str | None:
        """Where Retarus should POST status pushes: configured, or (simulator) ours."""
        cfg = self.config.current
        if self.push_secret is None:
            return None  # no credentials to protect the webhook: do not ask for pushes
        if cfg.retarus.push_url:
            return cfg.retarus.push_url
        if cfg.retarus.mode == "simulator":
            return self.webhook_url
        return None

    async def aclose(self) -> None:
        for client in (*self._old_http, self._http):
            if client is not None:
                await client.aclose()
