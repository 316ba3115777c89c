"""Board pictures as SVG text: per-square values, numbered arrows and marked squares.

Pure functions in the style of :mod:`chess.svg` (which draws every board here): each returns
SVG text, which a notebook shows with ``IPython.display.SVG(text)`` and :func:`save` writes
as SVG, PNG or PDF (PNG and PDF through cairosvg, which needs Debian's ``libcairo2``).

- :func:`board_svg`: one board with values on its squares (a colour scale centred at 0 and
  its legend), arrows (numbered: ``1`` is the first move given), marked squares (dashed
  outline) and a title.
- :func:`grid`: pictures side by side (in rows) under one title (a puzzle's clean and
  corrupted boards, a layer strip).
- :func:`square_values`: 64 values in the network's **token** numbering
  (:data:`leela_interp.board.encoding.TOKEN_NUMBERING`, the numbering of every square axis of the
  stage files) or a ``{square: value}`` dict, as ``{python-chess square: value}``.

Squares are python-chess squares (``chess.E4``); a board is drawn from its side to move's
point of view unless ``orientation`` says otherwise.

>>> import chess
>>> svg = board_svg(chess.Board(), {chess.E4: 1.0}, arrows=["e2e4"], title="1. e4")
>>> svg.startswith("<svg") and 'class="square light e4"' in svg
True
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import chess
import chess.svg
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex

from leela_interp.board.encoding import reorder_tokens_to_squares

CMAP = "RdBu_r"
"""Diverging colour map of the square values: blue negative, white 0, red positive."""
BOARD_COLORS = {"square light": "#f2f2f2", "square dark": "#cdcdcd",
                "square light lastmove": "#f2f2f2", "square dark lastmove": "#cdcdcd"}
"""Grey squares (as in the paper's figures), so that value colours stand out."""
ARROW_COLORS = {"blue": "#1f4fa8cc", "red": "#c0392bcc", "green": "#1e8449cc",
                "yellow": "#d68910cc"}
"""Colour of the k-th arrow (cycled, in this order), with its opacity (chess.svg's four arrow
colour names)."""
MARK_STYLE = 'fill="none" stroke="#111111" stroke-width="4" stroke-dasharray="8,5"'
"""Outline of a marked square (e.g. a corrupted one)."""
SAVE_SUFFIXES = (".svg", ".png", ".pdf")
"""What :func:`save` writes, by the path's suffix."""

_SQUARE = chess.svg.SQUARE_SIZE  # 45: chess.svg's square, in its own view-box units
_MARGIN = 15  # chess.svg's coordinate margin (coordinates=True, no borders)
_VIEW = 2 * _MARGIN + 8 * _SQUARE
_FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'
_LINE = 17  # title line height, px
_LEGEND = 100  # width of the colour bar and its labels, px


def square_values(values, board: chess.Board | None = None, *,
                  transform: int = 0) -> dict[chess.Square, float]:
    """``{python-chess square: value}`` from 64 token-ordered values or a ``{square: value}``.

    Args:
        values: an array-like of 64 numbers indexed by **token** (the stage files' square
            axes: ``square_to_token(square, board.turn, transform)``), or a mapping from
            python-chess squares (0..63) to numbers.
        board: the position the tokens belong to (its side to move fixes the frame); needed
            for token-ordered values only.
        transform: the board's canonical transform (``puzzles.h5``'s ``transform``), 0 = none.

    Returns:
        Every square with a value; NaN values are kept (:func:`board_svg` leaves them blank).

    Raises:
        ValueError: values of another length than 64, a key that is not a square, token
            values without a board.

    >>> import chess
    >>> v = square_values(np.arange(64.0), chess.Board("8/8/8/8/8/8/8/k6K b - - 0 1"))
    >>> v[chess.E7]  # black's token 12 is e7 (ranks flipped)
    12.0
    """
    if isinstance(values, Mapping):
        bad = [k for k in values if not isinstance(k, (int, np.integer)) or not 0 <= k < 64]
        if bad:
            raise ValueError(f"square values: key {bad[0]!r} is not a python-chess square "
                             f"(an int 0..63, e.g. chess.E4)")
        return {int(k): float(v) for k, v in values.items()}
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size != 64:
        raise ValueError(f"square values: got {array.size} values; give 64 (one per token) or "
                         f"a {{square: value}} dict")
    if board is None:
        raise ValueError("square values: 64 token-ordered values need the board they belong "
                         "to (its side to move fixes the token frame)")
    by_square = reorder_tokens_to_squares(array[None], [board.turn], [transform])[0]
    return {sq: float(by_square[sq]) for sq in chess.SQUARES}


@functools.cache
def _colormap(name: str):
    return colormaps[name].resampled(255)  # an odd table: 0 is its middle entry


def value_color(value: float, vmax: float, cmap: str = CMAP) -> str:
    """Hex colour of ``value`` on the scale ``[-vmax, vmax]`` (clipped); 0 is the colour map's
    middle entry (white for :data:`CMAP`), ``v`` and ``-v`` mirror entries.

    Raises:
        ValueError: ``vmax <= 0``.
    """
    if not vmax > 0:
        raise ValueError(f"value_color: vmax must be > 0, got {vmax!r}")
    return to_hex(_colormap(cmap)(0.5 + 0.5 * float(np.clip(value / vmax, -1, 1))))


def _moves(arrows: Iterable) -> list[tuple[chess.Square, chess.Square]]:
    out = []
    for a in arrows:
        if isinstance(a, str):
            a = chess.Move.from_uci(a)
        if isinstance(a, chess.Move):
            out.append((a.from_square, a.to_square))
        else:
            tail, head = a
            out.append((int(tail), int(head)))
    return out


def _corner(square: chess.Square, orientation: chess.Color) -> tuple[float, float]:
    """Top-left corner of ``square`` in chess.svg's view box."""
    f, r = chess.square_file(square), chess.square_rank(square)
    if orientation == chess.WHITE:
        return _MARGIN + f * _SQUARE, _MARGIN + (7 - r) * _SQUARE
    return _MARGIN + (7 - f) * _SQUARE, _MARGIN + r * _SQUARE


def _lines(title: str | None) -> list[str]:
    return [] if not title else title.split("\n")


def _text(lines: Sequence[str], x: float, y: float, *, size: int = 13) -> str:
    return "".join(f'<text x="{x:g}" y="{y + _LINE * (i + 1) - 4:g}" {_FONT} font-size="{size}" '
                   f'fill="#111">{escape(t)}</text>' for i, t in enumerate(lines))


def _legend(x: float, y: float, height: float, vmax: float, label: str, cmap: str) -> str:
    """A vertical colour bar from ``-vmax`` (bottom) to ``vmax`` (top) with ticks and label."""
    steps = 48
    h = height / steps
    parts = [f'<rect x="{x:g}" y="{y + (steps - 1 - i) * h:.2f}" width="14" height="{h + 0.3:.2f}" '
             f'fill="{value_color((i + 0.5) / steps * 2 * vmax - vmax, vmax, cmap)}" />'
             for i in range(steps)]
    parts.append(f'<rect x="{x:g}" y="{y:g}" width="14" height="{height:g}" fill="none" '
                 f'stroke="#444" stroke-width="0.8" />')
    for frac, tick in ((0.0, vmax), (0.25, vmax / 2), (0.5, 0.0), (0.75, -vmax / 2),
                       (1.0, -vmax)):
        ty = y + frac * height
        parts.append(f'<line x1="{x + 14:g}" y1="{ty:g}" x2="{x + 18:g}" y2="{ty:g}" '
                     f'stroke="#444" />')
        parts.append(f'<text x="{x + 20:g}" y="{ty + 4:g}" {_FONT} font-size="11" '
                     f'fill="#111">{tick:.2g}</text>')
    cy = y + height / 2
    for i, text in enumerate(label.split("\n")[:2]):
        cx = x + 68 + 13 * i
        parts.append(f'<text x="{cx:g}" y="{cy:g}" {_FONT} font-size="11" '
                     f'text-anchor="middle" fill="#111" '
                     f'transform="rotate(-90 {cx:g} {cy:g})">{escape(text)}</text>')
    return "".join(parts)


def board_svg(board: chess.Board, values=None, *, transform: int = 0, arrows: Iterable = (),
              numbered: bool = True, marked: Iterable[chess.Square] = (),
              title: str | None = None, label: str = "value", vmax: float | None = None,
              cmap: str = CMAP, legend: bool = True, orientation: chess.Color | None = None,
              size: int = 320) -> str:
    """One board as SVG text: values on its squares, arrows, marked squares, a title.

    Args:
        board: the position (pieces drawn by :func:`chess.svg.board`).
        values: per-square values (see :func:`square_values`: 64 token-ordered values or a
            ``{square: value}`` dict), drawn on a colour scale from ``-vmax`` (blue) through 0
            (white) to ``vmax`` (red) with a colour bar; NaN squares stay blank. None = no
            colours and no colour bar. With values but none finite, the bar says "no data".
        transform: the board's canonical transform, for token-ordered values.
        arrows: moves to draw (UCI strings, :class:`chess.Move` or ``(tail, head)`` squares),
            the k-th in the k-th colour of :data:`ARROW_COLORS` (cycled).
        numbered: label the k-th arrow ``k + 1`` near its tail.
        marked: squares outlined with a dashed line (e.g. the corrupted squares).
        title: text above the board; ``\\n`` starts a new line.
        label: the colour bar's label (say the unit and the sign convention); at most two
            lines (``\\n``) of about ``size / 7`` characters each.
        vmax: end of the colour scale; None = the largest absolute finite value (1 if all 0).
        cmap: a matplotlib colour map name (diverging, so that 0 is its middle).
        legend: draw the colour bar (False: boards of a strip sharing one ``vmax``).
        orientation: which side is at the bottom; None = the side to move.
        size: board width and height in px (the SVG is wider by the colour bar).

    Raises:
        ValueError: bad values (:func:`square_values`), ``vmax <= 0``, a marked square outside
            0..63, an arrow that is not a UCI move (``chess.InvalidMoveError``).
    """
    orientation = board.turn if orientation is None else orientation
    moves = _moves(arrows)
    marked = sorted({int(s) for s in marked})
    if any(not 0 <= s < 64 for s in marked):
        raise ValueError(f"board_svg: marked squares must be 0..63, got {marked!r}")
    fill, scale = {}, None
    if values is not None:
        by_square = square_values(values, board, transform=transform)
        finite = [abs(v) for v in by_square.values() if math.isfinite(v)]
        if vmax is None:
            vmax = max(finite, default=0.0) or 1.0
        if not vmax > 0:
            raise ValueError(f"board_svg: vmax must be > 0, got {vmax!r}")
        fill = {sq: value_color(v, vmax, cmap) for sq, v in by_square.items() if math.isfinite(v)}
        scale = (vmax if finite else 0.0) if legend else None
    names = list(ARROW_COLORS)
    svg_arrows = [chess.svg.Arrow(tail, head, color=names[k % len(names)])
                  for k, (tail, head) in enumerate(moves)]
    colors = {**BOARD_COLORS, **{f"arrow {k}": v for k, v in ARROW_COLORS.items()}}
    inner = chess.svg.board(board, orientation=orientation, fill=fill, arrows=svg_arrows,
                            colors=colors, size=size, coordinates=True)
    extra = []
    for sq in marked:
        x, y = _corner(sq, orientation)
        extra.append(f'<rect x="{x + 3:g}" y="{y + 3:g}" width="{_SQUARE - 6}" '
                     f'height="{_SQUARE - 6}" {MARK_STYLE} '
                     f'class="marked {chess.SQUARE_NAMES[sq]}" />')
    if numbered:
        for k, (tail, head) in enumerate(moves):
            (tx, ty), (hx, hy) = _corner(tail, orientation), _corner(head, orientation)
            cx = tx + _SQUARE / 2 + 0.3 * (hx - tx)
            cy = ty + _SQUARE / 2 + 0.3 * (hy - ty)
            extra.append(f'<circle cx="{cx:g}" cy="{cy:g}" r="10" fill="#ffffff" '
                         f'stroke="{ARROW_COLORS[names[k % len(names)]][:7]}" '
                         f'stroke-width="2.5" class="arrow-badge" />'
                         f'<text x="{cx:g}" y="{cy + 5:g}" {_FONT} font-size="14" '
                         f'font-weight="bold" text-anchor="middle" fill="#111" '
                         f'class="arrow-number">{k + 1}</text>')
    lines = _lines(title)
    top = 6 + _LINE * len(lines)
    inner = _place(inner, 6, top)
    inner = inner[:inner.rindex("</svg>")] + "".join(extra) + "</svg>"
    width = size + 12 + (_LEGEND if scale is not None else 0)
    height = top + size + 8
    parts = [_text(lines, 6, 4)]
    if scale:
        parts.append(_legend(size + 16, top + 0.05 * size, 0.9 * size, scale, label, cmap))
    elif scale is not None:
        parts.append(_text(["no data"], size + 16, top + size / 2 - _LINE, size=12))
    return _wrap(width, height, "".join(parts) + inner)


def _wrap(width: float, height: float, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{width:g}" height="{height:g}" viewBox="0 0 {width:g} {height:g}">'
            f'<rect width="100%" height="100%" fill="#ffffff" />{body}</svg>')


def _root_tag(svg: str) -> str:
    start = svg.index("<svg")
    return svg[start:svg.index(">", start) + 1]


def _place(svg: str, x: float, y: float) -> str:
    """``svg`` (its XML prolog dropped) as a nested element at ``(x, y)`` of its parent."""
    root = _root_tag(svg)
    return f'<svg x="{x:g}" y="{y:g}" ' + svg[svg.index(root) + 5:]


def svg_size(svg: str) -> tuple[float, float]:
    """``(width, height)`` in px of an SVG's root element (``pt`` converted at 96 px/inch).

    Raises:
        ValueError: the root has no numeric width and height.
    """
    head = _root_tag(svg)
    out = []
    for key in ("width", "height"):
        m = re.search(rf'\s{key}="([0-9.]+)(px|pt)?"', head)
        if not m:
            raise ValueError(f"svg_size: the root <svg> has no numeric {key} ({head[:120]!r})")
        out.append(float(m.group(1)) * (4 / 3 if m.group(2) == "pt" else 1))
    return out[0], out[1]


def grid(pictures: Sequence[str], *, columns: int | None = None, title: str | None = None,
         gap: int = 10) -> str:
    """Pictures (SVG texts with a width and height) in rows of ``columns`` (None = one row),
    each top-aligned, under ``title``; returns one SVG text.

    Raises:
        ValueError: no pictures, ``columns < 1``, or a picture without a width and height.
    """
    if not pictures:
        raise ValueError("grid: no pictures")
    columns = len(pictures) if columns is None else columns
    if columns < 1:
        raise ValueError(f"grid: columns must be >= 1, got {columns!r}")
    sizes = [svg_size(p) for p in pictures]
    lines = _lines(title)
    y = (6 + _LINE * len(lines)) if lines else 0
    body, width = [_text(lines, 6, 4, size=14)], 0.0
    for start in range(0, len(pictures), columns):
        x = 0.0
        for pic, (w, _) in zip(pictures[start:start + columns], sizes[start:start + columns]):
            body.append(_place(pic, x, y))
            x += w + gap
        width = max(width, x - gap)
        y += max(h for _, h in sizes[start:start + columns]) + gap
    return _wrap(width, y - gap, "".join(body))


def save(svg: str, path: str | Path, *, dpi: int = 200) -> Path:
    """Write an SVG text to ``path``: ``.svg`` as is, ``.png`` (``dpi`` pixels per inch at
    96 px per inch of the SVG, the dpi recorded in the file) or ``.pdf`` (vector).

    Raises:
        ValueError: another suffix than :data:`SAVE_SUFFIXES`, or ``dpi < 1``.
        RuntimeError: cairosvg or its C library (Debian ``libcairo2``) is missing.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise ValueError(f"save: cannot write {path.name!r}; the suffix must be one of "
                         f"{list(SAVE_SUFFIXES)}")
    if dpi < 1:
        raise ValueError(f"save: dpi must be >= 1, got {dpi!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".svg":
        path.write_text(svg)
        return path
    try:
        import cairosvg
    except (ImportError, OSError) as e:
        raise RuntimeError(f"save: writing {suffix} needs cairosvg and Debian's libcairo2 "
                           f"(pip install cairosvg; apt-get install libcairo2): {e}") from None
    if suffix == ".pdf":
        cairosvg.svg2pdf(bytestring=svg.encode(), write_to=str(path))
        return path
    from PIL import Image

    png = cairosvg.svg2png(bytestring=svg.encode(), scale=dpi / 96)
    Image.open(io.BytesIO(png)).save(path, dpi=(dpi, dpi))
    return path
