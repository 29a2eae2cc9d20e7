"""Fax → mail: the poller and delivery against the simulator and a real relay."""

from __future__ import annotations

import base64
import email
import email.policy
import io
import json
import mailbox
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pypdfium2
import pytest
from PIL import Image

from faxbridge.mail.transport import maildir_path
from faxbridge.store import Store
from tests.conftest import (
    Proc,
    arun_faxbridge,
    bridge_config,
    demo_topic_toml,
    retarus_toml,
    start_simulator,
    wait_for,
)
from tests.mailviews import html_text, sample_pdf, sample_tiff
from tests.relay import Relay

# three pages, as META says: the mail counts the pages in the document
PDF_A = sample_pdf(3, "first document")
META = {"callingNumber": "+4989123456", "calledNumber": "+4930999999",
        "remoteCsid": "ACME FAX", "pages": 3, "receivedTs": "2026-11-22T10:13:00Z"}


async def inject(url: str, topic: str = "demo", docs: list[bytes] | None = None,
                 metadata: dict | None = None, fax_id: str | None = None,
                 ext: str = "pdf") -> str:
    body: dict = {"topic": topic, "metadata": META if metadata is None else metadata,
                  "documents": [{"data": base64.b64encode(d).decode(), "extension": ext}
                                for d in (docs or [PDF_A])]}
    if fax_id:
        body["id"] = fax_id
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/_sim/inbound", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]


async def sim_post(url: str, path: str, body: dict) -> None:
    async with httpx.AsyncClient() as c:
        assert (await c.post(f"{url}/_sim/{path}", json=body)).status_code == 200


def topic(name: str, url: str, addresses: list[str], **kw) -> dict:
    return {"name": name, "url": f"{url}/faxin/rest/v1", "password": {"env": "FB_PULL_PW"},
            "addresses": addresses, "poll_interval": 0.1, **kw}


@pytest.fixture(autouse=True)
def pull_password(monkeypatch):
    monkeypatch.setenv("FB_PULL_PW", "simulator")


def wired(tmp_path: Path, sim_url: str, topics: list[dict], **sections) -> dict:
    """Sections for a bridge that uses the test's own simulator (not an embedded one)."""
    return dict(retarus={"send_url": f"{sim_url}/fax4a/ha-de/rest/v1",
                         # both data centers the HA URL forwards to: a final status
                         # push is confirmed against the report where the job ran
                         "datacenter_urls": [f"{sim_url}/fax4a/de1/rest/v1",
                                             f"{sim_url}/fax4a/de2/rest/v1"]},
                topics=topics, **sections)


def inbox(data_dir: Path, address: str) -> list[EmailMessage]:
    path = maildir_path(data_dir / "mail", address)
    if not (path / "cur").exists():  # the last subdirectory Maildir(create=True) makes
        return []
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
            for m in mailbox.Maildir(str(path), create=False)]


def fax_ids(msgs: list[EmailMessage]) -> list[str]:
    # the header names the fax for the admin (topic/id), the text does not
    return [m["X-Faxbridge-Fax"].split("/", 1)[1] for m in msgs]


async def settle(pred: Callable[[], Any], store: Store, sim_url: str) -> Any:
    """Wait for `pred`, then until nothing more can be mailed: every fax the simulator
    has is acked (it is never offered again), every stored fax is delivered and no mail
    waits to be sent. A duplicate would have been mailed by then, so what the
    mailboxes hold is final. Returns `pred()` evaluated then."""
    await wait_for(pred, timeout=60)

    async def quiet() -> bool:
        async with httpx.AsyncClient() as c:
            faxes = (await c.get(f"{sim_url}/_sim/inbound")).json()
        return (all(f["acked"] for f in faxes)
                and all(r.state == "delivered" for r in store.list_inbound(10_000))
                and all(m.state != "queued" for m in store.list_mail(10_000)))
    await wait_for(quiet, timeout=60)
    return pred()


async def test_one_fax_mailed_with_identical_pdf(sim, make_bridge, tmp_path):
    _, url = sim
    fid = await inject(url)
    bridge = await make_bridge(**wired(tmp_path, url, [topic("demo", url,
                                                             ["fax-inbox@localhost"])],
                                       mail={"timezone": "Europe/Berlin"}))
    data_dir = bridge.cfg.storage.data_dir
    msgs = await settle(lambda: inbox(data_dir, "fax-inbox@localhost"), bridge.store, url)
    assert len(msgs) == 1
    m = msgs[0]
    assert m["Subject"] == "Fax from +49 89 123456 (3 pages)"
    text = m.get_body(("plain",)).get_content()
    for line in ("From number:   +49 89 123456", "Sender ID:     ACME FAX",
                 "To number:     +49 30 999999", "Received:      Sun 22 Nov 2026, 11:13 CET",
                 "Pages:         3"):
        assert line in text
    assert m["X-Faxbridge-Fax"] == f"demo/{fid}" and fid not in text
    atts = list(m.iter_attachments())
    assert [a.get_filename() for a in atts] == ["fax-+4989123456-202611221013.pdf"]
    assert atts[0].get_content() == PDF_A and atts[0].get_content_type() == "application/pdf"
    row = bridge.store.inbound(f"demo/{fid}")
    assert row.state == "delivered" and row.acked == 1
    assert bridge.sim_state is None  # the test's simulator, not an embedded one


async def test_batch_larger_than_fetch_size(sim, make_bridge, tmp_path):
    state, url = sim
    ids = [await inject(url) for _ in range(23)]
    bridge = await make_bridge(**wired(tmp_path, url, [topic(
        "demo", url, ["fax-inbox@localhost"], batch_size=5)]))
    data_dir = bridge.cfg.storage.data_dir
    await settle(lambda: len(inbox(data_dir, "fax-inbox@localhost")) >= 23, bridge.store, url)
    got = fax_ids(inbox(data_dir, "fax-inbox@localhost"))
    assert sorted(got) == sorted(ids)
    assert all(f.acked for f in state.faxes["demo"])


async def test_two_topics_and_called_number_mailboxes(sim, make_bridge, tmp_path):
    _, url = sim
    a = await inject(url, "sales")
    b = await inject(url, "support")
    c = await inject(url, "support", metadata={**META, "calledNumber": "+49 30 555"})
    bridge = await make_bridge(**wired(tmp_path, url, [
        topic("sales", url, ["sales@example.com"]),
        topic("support", url, ["support@example.com"],
              numbers=[{"number": "+4930555", "addresses": ["boss@example.com"]}])]))
    d = bridge.cfg.storage.data_dir
    await settle(lambda: inbox(d, "sales@example.com") and inbox(d, "support@example.com")
                 and inbox(d, "boss@example.com"), bridge.store, url)
    assert fax_ids(inbox(d, "sales@example.com")) == [a]
    assert fax_ids(inbox(d, "support@example.com")) == [b]
    assert fax_ids(inbox(d, "boss@example.com")) == [c]


async def test_fax_in_two_formats_and_missing_metadata(sim, make_bridge, tmp_path):
    """A fax offered as <id>.pdf and <id>.tif (GET /files/{id}.{extension} can name
    several documents of one fax only by format): the topic's file_format (pdf by
    default) picks one, and the mail still goes out without any metadata."""
    _, url = sim
    tif = b"II*\x00" + bytes(16)
    fid = "9201777"
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/_sim/inbound", json={
            "topic": "demo", "id": fid, "metadata": {},
            "documents": [{"data": base64.b64encode(PDF_A).decode(), "extension": "pdf"},
                          {"data": base64.b64encode(tif).decode(), "extension": "tif"}]})
        assert r.status_code == 201, r.text
        assert r.json()["files"] == [f"{fid}.pdf", f"{fid}.tif"]
    bridge = await make_bridge(**wired(tmp_path, url, [topic("demo", url, ["in@example.com"])]))
    msgs = await settle(lambda: inbox(bridge.cfg.storage.data_dir, "in@example.com"),
                        bridge.store, url)
    assert len(msgs) == 1
    m = msgs[0]
    # no metadata: the pages are counted in the document itself
    assert m["Subject"] == "Fax from unknown sender (3 pages)"
    text = m.get_body(("plain",)).get_content()
    assert "From number:   unknown" in text and "Pages:         3" in text
    assert [a.get_content() for a in m.iter_attachments()] == [PDF_A]


async def test_ack_lost_refetched_fax_is_not_mailed_again(sim, make_bridge, tmp_path):
    """Every ack (the next calls, then the exit call at stop) fails; after the lock
    Retarus offers the fax again to the restarted bridge, which acks it only."""
    state, url = sim
    await sim_post(url, "config", {"lock_seconds": 0.3})
    fid = await inject(url)
    await sim_post(url, "faults", {"endpoint": "pull", "after": 1, "count": 10000,
                                   "status": 503})
    cfg = bridge_config(tmp_path, **wired(tmp_path, url, [topic("demo", url,
                                                                ["in@example.com"])]))
    first = await make_bridge(cfg)
    d = cfg.storage.data_dir
    await wait_for(lambda: inbox(d, "in@example.com"))
    await first.stop()
    assert not state.faxes["demo"][0].acked
    await sim_post(url, "faults", {"clear": True})
    # the second bridge polls until the lock runs out and the fax is offered again
    second = await make_bridge(cfg)
    await wait_for(lambda: state.faxes["demo"][0].acked)
    await settle(lambda: True, second.store, url)
    assert fax_ids(inbox(d, "in@example.com")) == [fid]
    assert state.faxes["demo"][0].offered >= 2
    assert second.store.inbound(f"demo/{fid}").acked == 1


async def test_refused_credentials_do_not_stop_other_topics(sim, make_bridge, tmp_path,
                                                            monkeypatch):
    _, url = sim
    monkeypatch.setenv("FB_BAD_PW", "wrong")
    await inject(url, "good")
    bad = topic("bad", url, ["x@example.com"])
    bad["password"] = {"env": "FB_BAD_PW"}
    bridge = await make_bridge(**wired(tmp_path, url, [bad, topic("good", url,
                                                                   ["good@example.com"])]))
    await settle(lambda: inbox(bridge.cfg.storage.data_dir, "good@example.com"),
                 bridge.store, url)
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{bridge.http_server.url}/readyz")
    assert r.status_code == 503
    topics = r.json()["checks"]["topics"]
    assert topics["bad"]["status"] == "auth-refused" and "401" in topics["bad"]["last_error"]
    assert topics["good"]["status"] == "ok" and topics["good"]["received"] == 1


async def test_relay_down_then_up_mailed_once(sim, make_bridge, tmp_path):
    _, url = sim
    fid = await inject(url)
    relay = Relay.reserved()  # refuses connections until started
    bridge = await make_bridge(**wired(
        tmp_path, url, [topic("demo", url, ["in@example.com"])],
        mail={"transport": "smtp", "retry_min_seconds": 0.2, "retry_max_seconds": 0.5,
              "relay": {"host": "127.0.0.1", "port": relay.port, "tls": "none"}}))
    try:
        await wait_for(lambda: (m := bridge.store.list_mail()) and m[0].attempts >= 2)
        await relay.start()
        await settle(lambda: relay.messages, bridge.store, url)
        assert len(relay.messages) == 1
        assert fax_ids(relay.parsed()) == [fid]
        assert list(relay.parsed()[0].iter_attachments())[0].get_content() == PDF_A
        await wait_for(lambda: bridge.store.inbound(f"demo/{fid}").state == "delivered")
    finally:
        await relay.stop()


async def test_refused_mailbox_goes_to_fallback(sim, make_bridge, tmp_path):
    _, url = sim
    fid = await inject(url)
    relay = await Relay().start()
    relay.refuse["gone@example.com"] = "550 5.1.1 mailbox unknown"
    try:
        bridge = await make_bridge(**wired(
            tmp_path, url, [topic("demo", url, ["gone@example.com"])],
            mail={"transport": "smtp", "fallback_mailbox": "faxadmin@example.com",
                  "relay": {"host": "127.0.0.1", "port": relay.port, "tls": "none"}}))
        await settle(lambda: relay.messages, bridge.store, url)
        assert len(relay.messages) == 1 and relay.messages[0][1] == ["faxadmin@example.com"]
        text = relay.parsed()[0].get_body(("plain",)).get_content()
        assert "could not be delivered to gone@example.com" in text and "550" in text
        row = await wait_for(lambda: (r := bridge.store.inbound(f"demo/{fid}"))
                             and r.state == "delivered" and r)
        assert row.delivered_to == "faxadmin@example.com"
        assert "refused by gone@example.com" in row.last_error
    finally:
        await relay.stop()


async def test_inbox_cli_list_and_resend(sim, make_bridge, tmp_path):
    _, url = sim
    fid = await inject(url)
    bridge = await make_bridge(**wired(tmp_path, url, [topic("demo", url, ["in@example.com"])]))
    d = bridge.cfg.storage.data_dir
    await settle(lambda: inbox(d, "in@example.com"), bridge.store, url)

    async def cli(*a: str) -> Any:
        return await arun_faxbridge("inbox", *a, "--data-dir", str(d))
    listed = json.loads((await cli("--json")).stdout)
    assert [(x["fax_id"], x["state"], x["acked"]) for x in listed] == [(fid, "delivered", True)]
    assert listed[0]["files"] == [f"{fid}.pdf"]
    out = await cli("resend", fid, "--to", "other@example.com")
    assert out.returncode == 0 and "queued again for other@example.com" in out.stdout
    msgs = await settle(lambda: inbox(d, "other@example.com"), bridge.store, url)
    assert len(msgs) == 1 and "administrator's request" in msgs[0].get_body(
        ("plain",)).get_content()
    assert len(inbox(d, "in@example.com")) == 1
    assert (await cli("resend", "nope")).returncode == 1


async def test_kill_after_download_before_ack_mailed_once(tmp_path, procs):
    url = start_simulator(procs, tmp_path)
    await sim_post(url, "config", {"lock_seconds": 1})
    fid = await inject(url)
    # the ack call (second pull) hangs, so the bridge dies after storing, before acking
    await sim_post(url, "faults", {"endpoint": "pull", "after": 1, "count": 1, "delay": 30})
    data = tmp_path / "data"
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(retarus_toml(url) + f"""
[storage]
data_dir = "{data}"
""" + demo_topic_toml(url, 0.2))
    args = ["serve", "--config", str(cfg), "--smtp-listen", "127.0.0.1:0", "--http-listen",
            "127.0.0.1:0"]
    first = Proc(args, tmp_path)
    procs.append(first)
    await first.listening()
    db = data / "faxbridge.sqlite3"

    def stored() -> bool:
        if not db.exists():
            return False
        store = Store(db)
        try:
            return store.has_inbound("demo", fid)
        finally:
            store.close()
    await wait_for(stored)
    first.kill9()
    async with httpx.AsyncClient() as c:
        sim_view = (await c.get(f"{url}/_sim/inbound")).json()
    assert sim_view[0]["acked"] is False  # killed before the ack
    await sim_post(url, "faults", {"clear": True})  # the stall may not have been used yet
    # the second bridge polls until the lock runs out and the fax is offered again
    second = Proc(args, tmp_path)
    procs.append(second)
    await second.listening()
    store = Store(db)
    try:
        msgs = await settle(lambda: inbox(data, "in@example.com"), store, url)
        assert fax_ids(msgs) == [fid]
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"{url}/_sim/inbound")).json()[0]["offered"] >= 2
        assert store.integrity_check() == "ok"
    finally:
        store.close()


def test_file_format_preference_picks_one_of_several_formats():
    from faxbridge.inbound.poll import preferred
    from faxbridge.retarus.models import PullDocument
    docs = [PullDocument(url="http://x/files/1.pdf"), PullDocument(url="http://x/files/1.tif"),
            PullDocument(url="http://x/files/1-1.tif")]
    assert [d.url for d in preferred(docs, "pdf")] == ["http://x/files/1.pdf",
                                                       "http://x/files/1-1.tif"]
    assert [d.url for d in preferred(docs, "tif")] == ["http://x/files/1.tif",
                                                       "http://x/files/1-1.tif"]


async def test_restart_finishes_faxes_whose_mail_outcome_was_recorded(sim, make_bridge,
                                                                       tmp_path):
    """Crash between the mail worker's commit and the inbound hook, both ways: a mail
    recorded as sent → delivered without a second mail; a mail recorded as refused →
    the fallback mailbox gets it."""
    _, url = sim
    a, b = await inject(url), await inject(url)
    cfg = bridge_config(tmp_path, **wired(tmp_path, url, [topic("demo", url,
                                                                ["in@example.com"])]))
    first = await make_bridge(cfg)
    d = cfg.storage.data_dir
    await settle(lambda: len(inbox(d, "in@example.com")) == 2, first.store, url)
    await first.stop()
    store = Store(d / "faxbridge.sqlite3")
    with store.db.tx() as c:  # the state the crash would have left
        c.execute("UPDATE inbound SET state='mailing'")
        c.execute("UPDATE mail_out SET state='failed', last_error='550 5.1.1 gone' "
                  "WHERE ref=?", (f"demo/{b}",))
    store.close()
    second = await make_bridge(cfg)
    await settle(lambda: inbox(d, "postmaster@localhost"), second.store, url)
    assert second.store.inbound(f"demo/{a}").state == "delivered"
    assert len(inbox(d, "in@example.com")) == 2  # no second mail for a
    assert fax_ids(inbox(d, "postmaster@localhost")) == [b]
    assert "550 5.1.1 gone" in inbox(d, "postmaster@localhost")[0].get_body(
        ("plain",)).get_content()


FAX_PAGE = (1143 / 98) / (1728 / 204)  # height / width of sample_tiff's pages


def preview_of(m: EmailMessage) -> Image.Image:
    """The image the HTML part shows: the part of the multipart/related beside it whose
    Content-ID the <img src="cid:…"> names, decoded."""
    html_part = m.get_body(("html",))
    related = next(p for p in m.walk() if p.get_content_type() == "multipart/related")
    assert html_part in related.get_payload()
    cids = re.findall(r'src="cid:([^"]+)"', html_part.get_content())
    assert len(cids) == 1
    [image] = [p for p in related.iter_parts() if p.get("Content-ID") == f"<{cids[0]}>"]
    assert image.get_content_type() == "image/png"
    return Image.open(io.BytesIO(image.get_content()))


def dark_share(img: Image.Image, box: tuple[float, float, float, float]) -> float:
    """Share of dark pixels in a box given in fractions of the image."""
    w, h = img.size
    part = img.convert("L").crop((int(box[0] * w), int(box[1] * h), int(box[2] * w),
                                  int(box[3] * h)))
    hist = part.histogram()
    return sum(hist[:128]) / max(1, sum(hist))


async def test_inbound_mail_shows_the_first_page_inline(sim, make_bridge, tmp_path):
    _, url = sim
    await inject(url)  # PDF_A: 3 pages, each with a black bar at a fifth of its height
    bridge = await make_bridge(**wired(tmp_path, url, [topic("demo", url, ["in@example.com"])]))
    [m] = await settle(lambda: inbox(bridge.cfg.storage.data_dir, "in@example.com"),
                       bridge.store, url)
    img = preview_of(m)
    # small, A4-shaped: the page, not a thumbnail of something else
    assert img.width == 600 and abs(img.height / img.width - 842 / 595) < 0.02
    assert dark_share(img, (0.1, 0.2, 0.9, 0.22)) > 0.8       # the bar drawn on the page
    assert dark_share(img, (0.0, 0.9, 1.0, 1.0)) == 0.0       # its empty bottom margin
    html = m.get_body(("html",)).get_content()
    assert 'alt="First page of the fax"' in html and 'width="300"' in html
    seen = html_text(html)
    assert "Sender ID: ACME FAX" in seen and "From number: +49 89 123456" in seen
    assert "You have received a fax of 3 pages." in seen
    # the PDF is attached as it came, not as an inline part
    [att] = list(m.iter_attachments())
    assert att.get_content() == PDF_A and att.get_content_disposition() == "attachment"


async def test_tiff_fax_is_attached_as_pdf(sim, make_bridge, tmp_path):
    _, url = sim
    tif = sample_tiff(2)
    fid = await inject(url, docs=[tif], metadata={**META, "pages": 2}, ext="tif")
    bridge = await make_bridge(**wired(tmp_path, url, [topic("demo", url, ["in@example.com"])]))
    [m] = await settle(lambda: inbox(bridge.cfg.storage.data_dir, "in@example.com"),
                       bridge.store, url)
    [att] = list(m.iter_attachments())
    assert att.get_content_type() == "application/pdf"
    assert att.get_filename() == "fax-+4989123456-202611221013.pdf"
    pdf = pypdfium2.PdfDocument(att.get_content())
    assert len(pdf) == 2
    # 204×98 dpi pixels made square: the page's real shape (1728 px / 204 dpi wide,
    # 1143 px / 98 dpi high: 215 × 296 mm), not one squashed to half its height
    w, h = pdf[0].get_size()
    assert abs(h / w - FAX_PAGE) < 0.01
    text = m.get_body(("plain",)).get_content()
    assert "It came as a TIFF image and is attached as PDF" in text
    img = preview_of(m)  # the preview comes from the TIFF, with the same correction
    assert abs(img.height / img.width - FAX_PAGE) < 0.01
    assert dark_share(img, (0.1, 0.2, 0.9, 0.208)) > 0.8
    assert m["Subject"] == "Fax from +49 89 123456 (2 pages)"
    assert bridge.store.inbound(f"demo/{fid}").state == "delivered"


async def test_tiff_kept_as_tiff_when_conversion_is_off(sim, make_bridge, tmp_path):
    _, url = sim
    tif = sample_tiff(1)
    await inject(url, docs=[tif], ext="tif")
    bridge = await make_bridge(**wired(tmp_path, url, [topic("demo", url, ["in@example.com"])],
                                       mail={"tiff_to_pdf": False}))
    [m] = await settle(lambda: inbox(bridge.cfg.storage.data_dir, "in@example.com"),
                       bridge.store, url)
    [att] = list(m.iter_attachments())
    assert att.get_content() == tif and att.get_filename().endswith(".tif")
    assert "attached as PDF" not in m.get_body(("plain",)).get_content()
    assert preview_of(m).width == 600  # the preview is there all the same
