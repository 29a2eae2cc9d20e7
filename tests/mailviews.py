"""Helpers for tests of the mails people read: sample fax documents drawn with
Pillow, the text a reader sees in an HTML part, and the HTML of a mail with its
cid: images made self-contained (for a browser)."""

from __future__ import annotations

import base64
import html.parser
import io
import re
from email.message import EmailMessage

from PIL import Image, ImageDraw, ImageFont


def _page(text: str, size: tuple[int, int], mode: str = "L") -> Image.Image:
    img = Image.new(mode, size, 255 if mode == "L" else 1)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(12, size[0] // 20))
    draw.text((size[0] // 12, size[1] // 12), text, fill=0, font=font)
    # a black bar and some "lines of text": the page is visibly not blank
    draw.rectangle((size[0] // 12, size[1] // 5, size[0] * 11 // 12, size[1] // 5 + 20), fill=0)
    for i in range(12):
        y = size[1] // 4 + i * size[1] // 24
        draw.rectangle((size[0] // 12, y, size[0] * (6 + i % 5) // 12, y + 6), fill=0)
    return img


def sample_pdf(pages: int, title: str = "Invoice 4711") -> bytes:
    """A PDF of `pages` A4 pages (at 72 dpi), each with its number drawn on it."""
    imgs = [_page(f"{title} - page {n}", (595, 842)) for n in range(1, pages + 1)]
    out = io.BytesIO()
    imgs[0].save(out, "PDF", save_all=True, append_images=imgs[1:], resolution=72)
    return out.getvalue()


def sample_tiff(pages: int, title: str = "Order 815") -> bytes:
    """A fax as Retarus may deliver it: bilevel, CCITT G4, 204×98 dpi ("normal"
    resolution, non-square pixels), one frame per page."""
    imgs = []
    for n in range(1, pages + 1):
        square = _page(f"{title} - page {n}", (1728, 2286), mode="1")
        imgs.append(square.resize((1728, 1143), Image.Resampling.NEAREST))
    out = io.BytesIO()
    imgs[0].save(out, "TIFF", save_all=True, append_images=imgs[1:], compression="group4",
                 dpi=(204, 98))
    return out.getvalue()


class _Text(html.parser.HTMLParser):
    BLOCKS = {"p", "br", "tr", "td", "th", "li", "h1", "h2", "h3", "table", "div", "ul",
              "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("title", "style", "head"):
            self.skip += 1
        if tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "style", "head"):
            self.skip -= 1
        if tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def words(text: str) -> str:
    """Text with every run of white space (non-breaking too) as one space."""
    return " ".join(text.replace("\xa0", " ").split())


def html_text(source: str) -> str:
    """What a reader sees of an HTML part, as words (blocks separated by spaces)."""
    parser = _Text()
    parser.feed(source)
    return words("".join(parser.out).replace("\u25a0", ""))


def text_lines(msg: EmailMessage) -> list[str]:
    """The text part's lines as words, without the signature and without the "- " of
    list items (the HTML shows bullets)."""
    text = msg.get_body(("plain",)).get_content()
    text = text.split("\n-- \n", 1)[0]
    return [w.removeprefix("- ") for line in text.splitlines() if (w := words(line))]


def self_contained_html(msg: EmailMessage) -> str:
    """The HTML part with each cid: reference replaced by a data: URI of its part."""
    html_part = msg.get_body(("html",))
    source = html_part.get_content()
    parts = {}
    for part in msg.walk():
        cid = part.get("Content-ID")
        if cid:
            parts[cid.strip("<>")] = part
    def data_uri(m: re.Match[str]) -> str:
        part = parts[m.group(1)]
        payload = base64.b64encode(part.get_payload(decode=True)).decode()
        return f"data:{part.get_content_type()};base64,{payload}"
    return re.sub(r"cid:([^\"'\s>]+)", data_uri, source)
