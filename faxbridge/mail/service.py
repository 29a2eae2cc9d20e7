"""The mail service of a running bridge: the composer (templates) and the transport
(Maildir or relay), both rebuilt from the config on reload."""

from __future__ import annotations

from faxbridge.config import Config
from faxbridge.mail.compose import Composer
from faxbridge.mail.transport import Transport, make_transport


class MailService:
    def __init__(self, cfg: Config) -> None:
        self.composer = Composer.for_config(cfg.mail, cfg.smtp.hostname)
        self.transport: Transport = make_transport(cfg.mail, cfg.storage.data_dir)

    def rebuild(self, cfg: Config) -> None:
        self.composer = Composer.for_config(cfg.mail, cfg.smtp.hostname)
        self.transport = make_transport(cfg.mail, cfg.storage.data_dir)
