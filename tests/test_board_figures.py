"""Board pictures: values land on the square python-chess names, read back from the SVG."""

from __future__ import annotations

import doctest
import xml.etree.ElementTree as ET

import chess
import numpy as np
import pytest
from PIL import Image

from leela_interp.board.encoding import square_to_token, transform_for
from leela_interp.outputs import board_figures as bf

WHITE = chess.Board("r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K w - - 1 25")
BLACK = chess.Board("5rk1/1p3ppp/pQ3b2/8/8/1P3N2/P4PPP/3R2K1 b - - 3 27")
# no castling rights, no pawns: lc0's canonical formats transform this board (flip + mirror)
TRANSFORMED = chess.Board("8/2K5/8/8/8/8/8/6qk w - - 0 1")


def square_fills(svg: str | ET.Element) -> dict[str, str]:
    """``{square name: fill colour}`` of every filled square of a board picture.

    chess.svg draws each square as ``<rect class="square light e4">`` and a filled square as a
    second ``<rect>`` right after it, at the same position and without a class.
    """
    root = ET.fromstring(svg) if isinstance(svg, str) else svg
    rects = [el for el in root.iter() if el.tag.endswith("rect")]
    fills = {}
    for square, nxt in zip(rects, rects[1:]):
        cls = square.get("class", "").split()
        if cls[:1] == ["square"] and nxt.get("class") is None and \
                (nxt.get("x"), nxt.get("y")) == (square.get("x"), square.get("y")):
            fills[cls[-1]] = nxt.get("fill")
    return fills


def boards(svg: str) -> list[ET.Element]:
    """The chess.svg boards of a picture, in order."""
    return [el for el in ET.fromstring(svg).iter()
            if el.tag.endswith("svg") and el.get("viewBox") == "0 0 390 390"]


def classes(svg: str, prefix: str) -> list[str]:
    return [el.get("class") for el in ET.fromstring(svg).iter()
            if (el.get("class") or "").startswith(prefix)]


def one_hot(token: int) -> np.ndarray:
    v = np.full(64, np.nan)
    v[token] = 1.0
    return v


@pytest.mark.parametrize("board", [WHITE, BLACK], ids=["white to move", "black to move"])
def test_a_value_planted_at_a_token_lands_on_the_square_python_chess_names(board):
    hot = bf.value_color(1.0, 1.0)
    for token in range(64):
        rank, file = divmod(token, 8)
        # the token frame is the side to move's: for black the ranks are flipped
        expected = chess.square_name(chess.square(file, rank if board.turn else 7 - rank))
        for orientation in (chess.WHITE, chess.BLACK):  # where the board is drawn from
            fills = square_fills(bf.board_svg(board, one_hot(token), orientation=orientation))
            assert fills == {expected: hot}, (token, orientation)


def test_tokens_follow_the_boards_canonical_transform():
    transform = transform_for(TRANSFORMED, 3)
    assert transform != 0
    for square in (chess.C7, chess.G1, chess.H1, chess.A8):
        token = square_to_token(square, chess.WHITE, transform)
        svg = bf.board_svg(TRANSFORMED, one_hot(token), transform=transform)
        assert set(square_fills(svg)) == {chess.square_name(square)}
        assert set(square_fills(bf.board_svg(TRANSFORMED, one_hot(token)))) == \
            {chess.square_name(token)}  # without the transform the value lands elsewhere


def test_dict_values_are_python_chess_squares_on_a_scale_centred_at_zero():
    fills = square_fills(bf.board_svg(BLACK, {chess.E4: 2.0, chess.D5: -1.0, chess.A1: 0.0}))
    assert fills == {"e4": bf.value_color(1, 1), "d5": bf.value_color(-0.5, 1),
                     "a1": bf.value_color(0, 1)}
    assert bf.value_color(0, 3) == "#f7f7f7"  # white at 0, whatever the scale
    for v in (0.3, 1.0):  # positive red, negative blue
        red, blue = bf.value_color(v, 1), bf.value_color(-v, 1)
        assert int(red[1:3], 16) > int(red[5:7], 16) and int(blue[5:7], 16) > int(blue[1:3], 16)


def test_legend_title_arrows_and_marked_squares():
    svg = bf.board_svg(WHITE, {chess.E4: 0.5, chess.H1: -0.25}, arrows=["h6h7", "h8h7", "e6e7"],
                       marked=[chess.D5, chess.B3], title="a title\nsecond line", label="effect")
    texts = [el for el in ET.fromstring(svg).iter() if el.tag.endswith("text")]
    assert [t.text for t in texts[:2]] == ["a title", "second line"]
    assert {"0.5", "-0.5", "0", "effect"} <= {t.text for t in texts}  # bar from -vmax to vmax
    assert [t.text for t in texts if t.get("class") == "arrow-number"] == ["1", "2", "3"]
    assert classes(svg, "arrow").count("arrow") == 2 * 3  # chess.svg's shaft and head, each
    assert classes(svg, "marked") == ["marked b3", "marked d5"]
    plain = bf.board_svg(WHITE)
    assert bf.svg_size(svg)[0] - bf.svg_size(plain)[0] == 100  # the colour bar's width
    empty = bf.board_svg(WHITE, np.full(64, np.nan))
    assert square_fills(empty) == {} and ">no data</text>" in empty
    for board in (WHITE, BLACK):  # drawn from white's side, then from black's
        drawn = bf.board_svg(board, marked=[chess.B3], arrows=["b3c5"])
        rects = {r.get("class"): r for r in ET.fromstring(drawn).iter() if r.tag.endswith("rect")}
        square = next(r for c, r in rects.items() if c and c.startswith("square") and "b3" in c)
        x, y = float(square.get("x")), float(square.get("y"))
        mark = rects["marked b3"]
        assert (float(mark.get("x")), float(mark.get("y"))) == (x + 3, y + 3)
        badge = next(el for el in ET.fromstring(drawn).iter() if el.get("class") == "arrow-badge")
        step = 1 if board.turn else -1  # c5 is a file right and two ranks up, seen from white
        assert (float(badge.get("cx")), float(badge.get("cy"))) == pytest.approx(
            (x + 22.5 + 0.3 * 45 * step, y + 22.5 - 0.3 * 90 * step))  # 30% of the way to c5


@pytest.mark.parametrize("call, message", [
    (lambda: bf.board_svg(WHITE, np.zeros(63)), "got 63 values; give 64"),
    (lambda: bf.board_svg(WHITE, {64: 1.0}), "key 64 is not a python-chess square"),
    (lambda: bf.square_values(np.zeros(64)), "need the board"),
    (lambda: bf.board_svg(WHITE, marked=[70]), "marked squares must be 0..63"),
    (lambda: bf.board_svg(WHITE, np.ones(64), vmax=0), "vmax must be > 0"),
    (lambda: bf.grid([]), "no pictures"),
    (lambda: bf.save("<svg/>", "x.gif"), "the suffix must be one of ['.svg', '.png', '.pdf']"),
])
def test_bad_input_names_the_value_and_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        call()


def test_grid_places_pictures_in_rows(tmp_path):
    a, b = bf.board_svg(WHITE, size=200), bf.board_svg(BLACK, {chess.E4: 1.0}, size=200)
    (wa, ha), (wb, hb) = bf.svg_size(a), bf.svg_size(b)
    assert bf.svg_size(bf.grid([a, b])) == (wa + 10 + wb, max(ha, hb))
    two_rows = bf.grid([a, b, a], columns=2, title="t")
    assert bf.svg_size(two_rows) == (wa + 10 + wb, 6 + 17 + max(ha, hb) + 10 + ha)
    assert len(square_fills(two_rows)) == 1
    ET.fromstring(two_rows)  # still one well-formed document


def test_save_writes_svg_pdf_and_png_at_200_dpi(tmp_path):
    svg = bf.board_svg(BLACK, {chess.E4: 1.0}, title="t", size=240)
    assert bf.save(svg, tmp_path / "b.svg").read_text() == svg
    assert bf.save(svg, tmp_path / "b.pdf").read_bytes().startswith(b"%PDF")
    png = bf.save(svg, tmp_path / "b.png")
    width, height = bf.svg_size(svg)
    with Image.open(png) as im:
        assert min(im.info["dpi"]) >= 199.5
        assert im.size == (round(width * 200 / 96), round(height * 200 / 96))
        # e4 (dark red) is drawn at e4's place of a board seen from black's side: the board's
        # view box (390 units, 15 of margin, 45 a square) is 240 px wide at (6, 6 + one line)
        k = 240 / 390
        x = 6 + (15 + (7 - chess.square_file(chess.E4)) * 45 + 22.5) * k
        y = 6 + 17 + (15 + chess.square_rank(chess.E4) * 45 + 22.5) * k
        r, g, b = im.convert("RGB").getpixel((round(x * 200 / 96), round(y * 200 / 96)))
        assert r > 80 > b


def test_docstring_examples_run():
    result = doctest.testmod(bf)
    assert result.attempted >= 4 and result.failed == 0
