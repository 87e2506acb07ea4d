"""QR codes as SVG, drawn on the server (no client-side library, nothing from a CDN)."""

from __future__ import annotations

import qrcode
import qrcode.image.svg


def qr_svg(data: str, *, title: str = "WhatsApp QR code") -> str:
    """A scalable SVG with a white quiet zone, sized by its container (CSS)."""
    image = qrcode.make(
        data,
        image_factory=qrcode.image.svg.SvgPathImage,
        error_correction=qrcode.constants.ERROR_CORRECT_L,
        border=2,
    )
    svg: str = image.to_string(encoding="unicode")
    # Drop the fixed millimetre size so the page decides; keep the viewBox for scaling.
    head, rest = svg.split(">", 1)
    head = " ".join(part for part in head.split(" ") if not part.startswith(("width=", "height=")))
    head += ' role="img" class="qr-svg"'
    return f'{head}><title>{title}</title><rect width="100%" height="100%" fill="#ffffff"/>{rest}'
