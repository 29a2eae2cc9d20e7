"""Maildir transport: standard layout, and redelivery of the same outbox mail is a no-op."""

from __future__ import annotations

import mailbox

from faxbridge.mail.transport import MaildirTransport, maildir_path

RAW = b"From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\nhello\r\n"


async def test_same_key_lands_once_per_mailbox(tmp_path):
    t = MaildirTransport(tmp_path)
    for _ in range(3):  # e.g. a crash after writing, before recording 'sent'
        assert (await t.send("a@b", ["c@d", "E@F"], RAW, key="42")).refused == []
    await t.send("a@b", ["c@d"], RAW, key="43")
    box = mailbox.Maildir(str(maildir_path(tmp_path, "c@d")), create=False)
    assert len(box) == 2 and box.get_message(next(iter(box.keys())))["Subject"] == "x"
    assert len(mailbox.Maildir(str(maildir_path(tmp_path, "e@f")), create=False)) == 1
    for sub in ("new", "cur", "tmp"):
        assert (maildir_path(tmp_path, "c@d") / sub).is_dir()
    assert list((maildir_path(tmp_path, "c@d") / "tmp").iterdir()) == []
