"""A tiny PNG writer (zlib + struct) and a plain line chart, for machines without matplotlib.

The chart has no text: axes from 0 to the largest x and y, one polyline per series (dashed when
asked), 3-pixel dots at the points. Whatever calls it documents the series and colours.
"""

import struct
import zlib


def write_png(path, width, height, pixels):
    """pixels: bytearray of width * height * 3 (RGB, rows top to bottom)."""
    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3])
                   for y in range(height))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                            0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def _rgb(hexcolor):
    h = hexcolor.lstrip("#")
    return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))


def line_chart(path, series, width=640, height=400, margin=40):
    """series: [(color '#rrggbb', [(x, y), ...], dashed bool)]."""
    px = bytearray(b"\xff" * (width * height * 3))

    def put(x, y, c):
        if 0 <= x < width and 0 <= y < height:
            i = (y * width + x) * 3
            px[i:i + 3] = bytes(c)

    xs = [x for _, pts, _ in series for x, _ in pts] or [1.0]
    ys = [y for _, pts, _ in series for _, y in pts] or [1.0]
    xmax, ymax = max(xs) or 1.0, max(ys) or 1.0

    def to_px(x, y):
        return (int(margin + (width - 2 * margin) * x / xmax),
                int(height - margin - (height - 2 * margin) * y / ymax))

    for x in range(margin, width - margin):
        put(x, height - margin, (0, 0, 0))
    for y in range(margin, height - margin):
        put(margin, y, (0, 0, 0))
    for color, pts, dashed in series:
        c = _rgb(color)
        pts = [to_px(x, y) for x, y in pts]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            n = max(abs(x1 - x0), abs(y1 - y0), 1)
            for k in range(n + 1):
                if dashed and (k // 6) % 2:
                    continue
                put(x0 + (x1 - x0) * k // n, y0 + (y1 - y0) * k // n, c)
        for x, y in pts:
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    put(x + dx, y + dy, c)
    write_png(path, width, height, px)
