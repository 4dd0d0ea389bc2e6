"""A contact sheet: the source picture beside its generations, each prompt under its images.

People judge customization by eye before they trust a number, so `elite eval` writes one sheet
per concept. Layout: a left column with the source picture (captioned "source"), then one row per
prompt with its images left to right, the prompt and seed under each image. Pure PIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MARGIN = 8
CAPTION_LINES = 3


@dataclass
class SheetRow:
    prompt: str
    images: list[Image.Image]
    seeds: list[int] = field(default_factory=list)


def fit(image: Image.Image, tile: int) -> Image.Image:
    """The image scaled to fit a tile x tile square, aspect kept (a copy; the sheet keeps only these)."""
    scaled = image.convert("RGB")
    factor = tile / max(scaled.size)
    size = (max(1, round(scaled.width * factor)), max(1, round(scaled.height * factor)))
    # Small images (tests, 64 px previews) are scaled up with NEAREST so their pixels stay visible.
    return scaled.resize(size, Image.LANCZOS if factor < 1 else Image.NEAREST)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def wrap(text: str, font, width: int, max_lines: int = CAPTION_LINES) -> list[str]:
    """Greedy word wrap to a pixel width; the last line ends in '…' if text is left over."""
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "…"]
    return lines


def contact_sheet(source: Image.Image, rows: list[SheetRow], tile: int = 256, title: str = "") -> Image.Image:
    """Source in the first column, each row's images after it, captions under every image."""
    font = _font()
    line_height = int(font.getbbox("Ag")[3]) + 3
    caption_height = CAPTION_LINES * line_height + MARGIN
    columns = 1 + max((len(row.images) for row in rows), default=0)
    cell_width, cell_height = tile + MARGIN, tile + caption_height
    sheet = Image.new("RGB", (MARGIN + columns * cell_width, MARGIN + max(1, len(rows)) * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    def place(image: Image.Image, column: int, row: int, caption: str) -> None:
        x, y = MARGIN + column * cell_width, MARGIN + row * cell_height
        image = fit(image, tile)
        sheet.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
        for number, line in enumerate(wrap(caption, font, tile)):
            draw.text((x, y + tile + 2 + number * line_height), line, fill=INK, font=font)

    place(source, 0, 0, f"source {title}".strip())
    for row_number, row in enumerate(rows):
        for column, image in enumerate(row.images):
            seed = f" (seed {row.seeds[column]})" if column < len(row.seeds) else ""
            place(image, 1 + column, row_number, row.prompt + seed)
    return sheet
