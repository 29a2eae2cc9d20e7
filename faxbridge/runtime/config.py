"""The config provider: one place that holds the running config, swapped on reload."""

from __future__ import annotations

from faxbridge.config import Config


class ConfigProvider:
    """Readers take `.current` each time they need it (per SMTP command, per job), so a
    reload reaches every part at once without any part holding on to an old config."""

    def __init__(self, cfg: Config) -> None:
        self.current = cfg

    def swap(self, cfg: Config) -> Config:
        old, self.current = self.current, cfg
        return old
