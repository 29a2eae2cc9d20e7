"""Looking into fax documents for the mails people read: page counts, a small PNG of
the first page, and a TIFF fax as PDF. Pillow reads TIFF (fax TIFFs are CCITT G3/G4
bilevel images, often with 204×98 dpi "normal" resolution, i.e. non-square pixels);
pypdfium2 renders PDF. A document that cannot be read yields None, never an error:
the mail then goes out without a preview or a count, as before.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterator

import pypdfium2
from PIL import Image, ImageSequence

log = logging.getLogger("faxbridge.mail")

# Width of the preview image in pixels: twice the width the mail shows it at
# (templates use 300 px), so it stays sharp on high-density screens.
PREVIEW_WIDTH = 600
# A decompression bomb in a received TIFF must not take the bridge's memory: a fax
# page at 400 dpi A4 is about 3300 × 4700 pixels, 2 × 10^7 leaves ample room.
MAX_PIXELS = 20_000_000
# PDFium is not thread-safe (pypdfium2's documentation: never call it from several
# threads at once); received faxes are composed in worker threads, reports on the
# event loop's thread. One lock around every use of it.
PDFIUM = threading.Lock()


def kind_of(content_type: str, name: str, data: bytes) -> str | None:
    """'pdf', 'tiff' or None, by content, then by declared type and name."""
    if data[:5] == b"%PDF-":
        return "pdf"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    ctype, lower = content_type.lower(), name.lower()
    if ctype == "application/pdf" or lower.endswith(".pdf"):
        return "pdf"
    if ctype in ("image/tiff", "image/tif") or lower.endswith((".tif", ".tiff")):
        return "tiff"
    return None


def _open_tiff(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"image too large ({img.width}×{img.height})")
    return img


def _square(frame: Image.Image) -> tuple[Image.Image, float]:
    """The frame with square pixels, and its horizontal resolution in dpi. A fax in
    normal resolution (204×98 dpi) would otherwise look squashed to half its height."""
    dpi = frame.info.get("dpi") or (0, 0)
    try:
        x, y = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError, IndexError):
        x = y = 0.0
    if x > 0 and y > 0 and abs(x / y - 1) > 0.05:
        frame = frame.resize((frame.width, max(1, round(frame.height * x / y))),
                             Image.Resampling.NEAREST)
    return frame, (x if x > 0 else 204.0)


def _tiff_frames(img: Image.Image) -> Iterator[Image.Image]:
    for frame in ImageSequence.Iterator(img):
        if frame.width * frame.height > MAX_PIXELS:
            raise ValueError(f"page too large ({frame.width}×{frame.height})")
        yield frame


def page_count(content_type: str, name: str, data: bytes) -> int | None:
    """Pages of a PDF or TIFF; 1 for other images; None when unknown (text and office
    documents are paginated by the fax service, not here)."""
    try:
        kind = kind_of(content_type, name, data)
        if kind == "pdf":
            with PDFIUM:
                pdf = pypdfium2.PdfDocument(data)
                try:
                    return len(pdf)
                finally:
                    pdf.close()
        if kind == "tiff":
            return int(getattr(_open_tiff(data), "n_frames", 1))
        if content_type.lower().startswith("image/"):
            return 1
    except Exception as exc:  # noqa: BLE001 - any unreadable document: no count
        log.info("cannot count the pages of %s: %s: %s", name, type(exc).__name__, exc)
    return None


def _to_png(img: Image.Image, width: int) -> bytes:
    img = img.convert("L")
    if img.width != width:
        # BOX averages the pixels each target pixel covers: right for shrinking a
        # bilevel fax page into grey, and several times faster than LANCZOS
        height = max(1, round(img.height * width / img.width))
        img = img.resize((width, height), Image.Resampling.BOX)
    # 16 grey levels are plenty for a preview and halve the PNG (a lookup table:
    # far cheaper than quantize(), this runs for every received fax)
    img = img.point([v // 17 * 17 for v in range(256)])
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=6)
    return out.getvalue()


def first_page_png(content_type: str, name: str, data: bytes,
                   width: int = PREVIEW_WIDTH) -> bytes | None:
    """A PNG of the document's first page, `width` pixels wide; None if unreadable."""
    try:
        kind = kind_of(content_type, name, data)
        if kind == "pdf":
            with PDFIUM:
                pdf = pypdfium2.PdfDocument(data)
                try:
                    page = pdf[0]
                    scale = width / max(1.0, page.get_width())
                    # a copy: the bitmap's memory belongs to PDFium and goes with pdf
                    image = page.render(scale=scale, grayscale=True).to_pil().copy()
                finally:
                    pdf.close()
            return _to_png(image, width)
        if kind == "tiff":
            frame = next(_tiff_frames(_open_tiff(data)))
            return _to_png(_square(frame)[0], width)
    except Exception as exc:  # noqa: BLE001 - no preview for an unreadable document
        log.info("no preview of %s: %s: %s", name, type(exc).__name__, exc)
    return None


def tiff_to_pdf(data: bytes) -> bytes | None:
    """The TIFF's pages as one PDF, each page at its own size; None if unreadable."""
    try:
        pages = []
        resolution = 204.0
        for frame in _tiff_frames(_open_tiff(data)):
            square, resolution = _square(frame)
            # bilevel pages stay bilevel (small); anything else becomes greyscale
            pages.append(square.convert("1") if square.mode == "1" else square.convert("L"))
        if not pages:
            return None
        out = io.BytesIO()
        pages[0].save(out, "PDF", save_all=True, append_images=pages[1:],
                      resolution=resolution)
        return out.getvalue()
    except Exception as exc:  # noqa: BLE001 - the TIFF is attached as it came
        log.warning("cannot convert a received TIFF to PDF (%s: %s); attaching the TIFF",
                    type(exc).__name__, exc)
        return None
