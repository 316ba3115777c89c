"""Chess positions with history for the lc0-equality tests, made here from seeds (no data files).

Every board carries its history as its move stack from a root position (``board.root()``), the
way lc0's ``GameState(fen=root, moves=...)`` sees a game. The sets mix:

* random games from the standard start position (lc0's ``fen_only`` leaves the history before
  it empty), some with pieces shuffled back and forth (repetitions);
* games re-rooted at a random game's position: a FEN root (non-zero rule-50 counters, partial
  castling rights, en-passant squares) with a few plies of history after it;
* Chess960 starts (castling rooks off the a and h files);
* crafted lines (:data:`CRAFTED`): one and two repetitions, en passant possible and not, every
  castling move and every way of losing a right, promotions and underpromotions of both
  colours (with and without captures), rule-50 counters at 99, 100 and beyond.

:func:`features` counts what a set covers, so that the tests using it can assert the set still
exercises what the planes and the policy depend on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import chess

#: Named (root FEN, moves in UCI) lines; ``"startpos"`` is the standard start.
CRAFTED: dict[str, tuple[str, str]] = {
    # Repetitions: the position before the shuffle occurs again once, then twice.
    "startpos repeated once": ("startpos", "g1f3 g8f6 f3g1 f6g8"),
    "startpos repeated twice": ("startpos", "g1f3 g8f6 f3g1 f6g8 g1f3 g8f6 f3g1 f6g8"),
    "repetition then new moves": ("startpos", "g1f3 g8f6 f3g1 f6g8 e2e4 e7e5 e1e2"),
    "repetition deep in history": ("startpos", "e2e4 e7e5 g1f3 b8c6 f3g1 c6b8 g1f3 b8c6 d2d3"),
    "middlegame repeated once": (
        "r1bqkb1r/pppp1ppp/2n2n2/4p3/2B1P3/5N2/PPPP1PPP/RNBQK2R w KQkq - 4 4",
        "b1c3 f8c5 c3b1 c5f8"),
    "middlegame repeated twice, black to move": (
        "r1bqkb1r/pppp1ppp/2n2n2/4p3/2B1P3/5N2/PPPP1PPP/RNBQK2R w KQkq - 4 4",
        "b1c3 f8c5 c3b1 c5f8 b1c3 f8c5 c3b1 c5f8 b1c3"),
    "endgame rook shuffle": ("8/5k2/8/8/8/8/1R6/4K3 w - - 10 60", "b2b3 f7f6 b3b2 f6f7 b2b3"),
    # En passant.
    "double push, no capture possible": ("startpos", "e2e4"),
    "en passant possible (white)": ("startpos", "e2e4 d7d5 e4e5 f7f5"),
    "en passant taken (white)": ("startpos", "e2e4 d7d5 e4e5 f7f5 e5f6"),
    "en passant not taken": ("startpos", "e2e4 d7d5 e4e5 f7f5 g1f3"),
    "en passant possible (black)": ("startpos", "g1f3 d7d5 e2e3 d5d4 c2c4"),
    "en passant taken (black)": ("startpos", "g1f3 d7d5 e2e3 d5d4 c2c4 d4c3"),
    "root with en-passant square": (
        "rnbqkbnr/ppp1pppp/8/8/3pP3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 3", ""),
    "root with en-passant square, then moves": (
        "rnbqkbnr/ppp1pppp/8/8/3pP3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 3", "d4e3 d2e3"),
    "pinned en-passant pawn": ("8/8/8/KPp4r/8/8/8/6k1 w - c6 0 2", "a5a4"),
    # Castling: every castling move, and rights lost by king, rook, capture.
    "both castle short": ("startpos", "e2e4 e7e5 g1f3 b8c6 f1c4 g8f6 e1g1 f8c5 d2d3 e8g8"),
    "both castle long": (
        "r3kbnr/pppqpppp/2n5/3p1b2/3P1B2/2N5/PPPQPPPP/R3KBNR w KQkq - 6 5", "e1c1 e8c8"),
    "castling moves available": ("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1", ""),
    "castling moves available, black": ("r3k2r/8/8/8/8/8/8/R3K2R b KQkq - 0 1", "e8g8"),
    "rights lost by king moves": ("startpos", "e2e4 e7e5 e1e2 e8e7 e2e1 e7e8"),
    "rights lost by rook moves": ("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1", "a1b1 h8g8 b1a1 g8h8"),
    "rook captured on its square": ("r3k2r/8/8/8/8/8/6B1/R3K2R w KQkq - 0 1", "g2a8 e8g8"),
    "one right each": ("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w Kq - 0 1", "e1g1 e8c8"),
    # Promotions and underpromotions, both colours, with and without captures.
    "white promotes to queen": ("7k/P7/8/8/8/2K5/7p/8 w - - 0 1", "a7a8q"),
    "white promotes to knight": ("7k/P7/8/8/8/2K5/7p/8 w - - 0 1", "a7a8n h8g7"),
    "white captures and promotes to rook": ("1r5k/P7/8/8/8/8/7p/K7 w - - 0 1", "a7b8r"),
    "white captures and promotes to bishop": ("1r5k/P7/8/8/8/8/7p/K7 w - - 0 1", "a7b8b h8g7"),
    "black promotes to queen": ("7k/P7/8/8/8/2K5/7p/8 b - - 0 1", "h2h1q"),
    "black promotes to knight": ("7k/P7/8/8/8/2K5/7p/8 b - - 0 1", "h2h1n c3d4"),
    "black captures and promotes to bishop": ("1k6/8/8/8/8/8/7p/K5R1 b - - 0 1", "h2g1b"),
    "black captures and promotes to rook": ("1k6/8/8/8/8/8/7p/K5R1 b - - 0 1", "h2g1r a1b2"),
    "promotions available": ("rnb1kbnr/pP3ppp/8/8/8/8/P1PPPPPP/RNBQKBNR w KQkq - 0 1", ""),
    # Rule-50 counters.
    "rule50 99": ("8/5k2/8/8/8/8/1R6/4K3 w - - 99 120", ""),
    "rule50 99 then a quiet move": ("8/5k2/8/8/8/8/1R6/4K3 w - - 99 120", "b2b3"),
    "rule50 past 100": ("8/5k2/8/8/8/8/1R6/4K3 b - - 100 120", "f7e6 b2b3 e6f7"),
    "rule50 reset by a capture": ("8/5k2/8/8/8/8/1R3r2/4K3 w - - 60 90", "e1f2"),
}


def crafted() -> list[chess.Board]:
    """The boards of :data:`CRAFTED`, in order."""
    boards = []
    for fen, moves in CRAFTED.values():
        board = chess.Board() if fen == "startpos" else chess.Board(fen)
        for uci in moves.split():
            board.push_uci(uci)
        boards.append(board)
    return boards


def play(board: chess.Board, rng: random.Random, plies: int) -> chess.Board:
    """``board`` with up to ``plies`` random legal moves pushed (fewer if the game ends).

    Castling, promotions and en-passant captures, when legal, are played half of the time, so
    that random games hold them often enough.
    """
    board = board.copy()
    for _ in range(plies):
        moves = list(board.legal_moves)
        if not moves:
            break
        special = [m for m in moves
                   if m.promotion or board.is_castling(m) or board.is_en_passant(m)]
        board.push(rng.choice(special if special and rng.random() < 0.5 else moves))
    return board


def _reversible(board: chess.Board) -> list[chess.Move]:
    """Quiet knight, bishop and queen moves: they keep castling rights and can be taken back."""
    return [m for m in board.legal_moves
            if board.piece_type_at(m.from_square) in (chess.KNIGHT, chess.BISHOP, chess.QUEEN)
            and not board.is_capture(m)]


def shuffle(board: chess.Board, rng: random.Random, cycles: int) -> chess.Board:
    """``board`` after ``cycles`` times a move by each side and both taken back (repetitions);
    a cycle that cannot be played (no reversible moves) is skipped."""
    board = board.copy()
    for _ in range(cycles):
        for _attempt in range(10):
            ours = _reversible(board)
            if not ours:
                break
            m1 = rng.choice(ours)
            board.push(m1)
            theirs = _reversible(board)
            if theirs:
                m2 = rng.choice(theirs)
                board.push(m2)
                back1 = chess.Move(m1.to_square, m1.from_square)
                back2 = chess.Move(m2.to_square, m2.from_square)
                if board.is_legal(back1):
                    board.push(back1)
                    if board.is_legal(back2):
                        board.push(back2)
                        break
                    board.pop()
                board.pop()
            board.pop()
    return board


def reroot(board: chess.Board) -> chess.Board:
    """A board holding ``board``'s position as its root (no history); the en-passant square
    is kept after any double push, capturable or not (as a FEN writes it)."""
    return chess.Board(board.fen(en_passant="fen"), chess960=board.chess960)


def lc0_positions(n: int, seed: int = 0) -> list[chess.Board]:
    """``n`` boards with history (at least ``len(CRAFTED)``): every crafted line, then a seeded
    mix of ~40% random games from the start position (a third of them with repetitions), ~50%
    re-rooted games (a FEN root from a random game, then 0-7 plies) and ~10% Chess960 games."""
    rng = random.Random(seed)
    boards = crafted()[:n]
    while len(boards) < n:
        kind = rng.random()
        if kind < 0.4:
            board = play(chess.Board(), rng, rng.randint(0, 14) if rng.random() < 0.5 else
                         rng.randint(15, 120))
            if rng.random() < 0.33:
                board = play(shuffle(board, rng, rng.randint(1, 2)), rng, rng.randint(0, 2))
        elif kind < 0.9:
            root = reroot(play(chess.Board(), rng, rng.randint(1, 100)))
            board = play(root, rng, rng.randint(0, 7))
            if rng.random() < 0.2:
                board = shuffle(board, rng, 1)
        else:
            root = chess.Board.from_chess960_pos(rng.randrange(960))
            board = play(root, rng, rng.randint(0, 30))
        boards.append(board)
    return boards


def endgames(n: int, seed: int = 0, *, pawns_every: int = 0) -> list[chess.Board]:
    """``n`` pawnless positions without castling rights, where every canonical transform occurs
    (some with 1-3 plies of history), led by kings on the long diagonal with symmetric material
    (each of lc0's tie-breaks decides once). ``pawns_every=k`` adds a pawn to every k-th random
    position (flip only)."""
    rng = random.Random(seed)
    fens = [
        "8/8/8/8/8/8/6K1/7k w - - 0 1", "8/8/8/8/8/5K2/8/q6k w - - 3 40",
        "8/8/8/8/4K3/8/8/k6q w - - 0 1", "k7/8/8/8/8/8/8/7K w - - 0 1",
        "7k/8/8/8/8/8/8/K7 b - - 0 1", "8/8/8/8/8/8/1N4N1/K6k w - - 0 1",
        "8/8/8/8/8/8/r7/K6r w - - 0 1", "k7/8/8/8/8/8/7B/6NK w - - 0 1",
        "k7/8/8/8/8/8/7N/6BK w - - 0 1", "k7/8/8/8/8/8/7R/6QK w - - 0 1",
        "k7/8/8/8/8/8/7Q/6RK w - - 0 1", "k7/8/8/8/8/8/7N/6RK w - - 0 1",
        "k7/8/8/8/8/8/7b/6nK w - - 0 1", "K7/8/8/8/8/8/7n/6bk b - - 0 1",
        "7K/6q1/8/8/8/8/8/k7 b - - 0 1", "k7/8/8/8/8/8/7n/6QK w - - 0 1",
        "8/8/8/8/4K3/8/8/k7 w - - 0 1", "8/8/8/8/7N/8/8/4k2K w - - 0 1",
        "4K2k/8/8/7n/8/8/8/8 b - - 0 1",
    ]
    boards = [chess.Board(fen) for fen in fens][:n]
    count = 0
    while len(boards) < n:
        count += 1
        pawn = bool(pawns_every) and count % pawns_every == 0
        board = chess.Board(None)
        extra = rng.sample([chess.QUEEN, chess.ROOK, chess.ROOK, chess.BISHOP, chess.KNIGHT] * 2,
                           rng.randint(1, 4)) + ([chess.PAWN] if pawn else [])
        squares = rng.sample(range(8, 56) if pawn else chess.SQUARES, 2 + len(extra))
        board.set_piece_at(squares[0], chess.Piece(chess.KING, chess.WHITE))
        board.set_piece_at(squares[1], chess.Piece(chess.KING, chess.BLACK))
        for square, piece_type in zip(squares[2:], extra):
            board.set_piece_at(square, chess.Piece(piece_type, rng.random() < 0.5))
        board.turn = rng.random() < 0.5
        board.halfmove_clock = rng.choice([0, 0, 5, 37])
        if not board.is_valid() or not any(board.legal_moves):
            continue
        boards.append(play(chess.Board(board.fen()), rng, rng.choice([0, 0, 1, 2, 3])))
    return boards


def is_startpos(board: chess.Board) -> bool:
    """Whether the game's root is the standard start position (castling rights included)."""
    root = board.root()
    return (root.board_fen() == chess.STARTING_BOARD_FEN and root.turn == chess.WHITE
            and root.clean_castling_rights() == chess.BB_CORNERS and root.ep_square is None)


def repetitions_in_history(board: chess.Board, slots: int = 8) -> int:
    """How many of the last ``slots`` positions (the planes' history) occurred before."""
    board = board.copy()
    count = 0
    for _ in range(slots):
        count += board.is_repetition(2)
        if not board.move_stack:
            break
        board.pop()
    return count


def features(boards: Iterable[chess.Board]) -> dict[str, int]:
    """How many boards have each feature the planes and the policy depend on."""
    counts = dict.fromkeys([
        "white", "black", "castling rights", "no castling rights", "castling played",
        "root en-passant square", "en passant capturable", "promotion played",
        "underpromotion played", "repetition in history", "repeated twice", "startpos root",
        "fen root", "rule50 >= 99", "chess960 castling"], 0)
    for b in boards:
        counts["white" if b.turn else "black"] += 1
        counts["castling rights" if b.clean_castling_rights() else "no castling rights"] += 1
        replay, castled = b.root(), False
        for move in b.move_stack:
            castled |= replay.is_castling(move)
            replay.push(move)
        counts["castling played"] += castled
        counts["root en-passant square"] += b.root().ep_square is not None
        counts["en passant capturable"] += b.has_legal_en_passant()
        counts["promotion played"] += any(m.promotion for m in b.move_stack)
        counts["underpromotion played"] += any(m.promotion not in (None, chess.QUEEN)
                                               for m in b.move_stack)
        counts["repetition in history"] += repetitions_in_history(b) > 0
        counts["repeated twice"] += b.is_repetition(3)
        counts["startpos root" if is_startpos(b) else "fen root"] += 1
        counts["rule50 >= 99"] += b.halfmove_clock >= 99
        counts["chess960 castling"] += b.chess960 and bool(
            b.clean_castling_rights() & ~chess.BB_CORNERS)
    return counts


def v2_safe(board: chess.Board) -> chess.Board:
    """``board``, or the same game from its root with the rule-50 counter set to 0 where lc0
    0.32.1 would crash on it in a V2 input format (5, 133).

    lc0 0.32 skips non-repeated positions in V2 formats and segfaults when that walk passes the
    root: it stops at the first position with rule50 = 0 or a castling change, at an older
    position with en passant, and at the root when the root has an en-passant square.
    """
    b = board.copy()
    rights = b.clean_castling_rights()
    while True:
        if b.halfmove_clock == 0 or b.clean_castling_rights() != rights:
            return board
        if not b.move_stack:
            if b.ep_square is not None:
                return board
            break
        b.pop()
    root = board.root()
    root.halfmove_clock = 0
    for move in board.move_stack:
        root.push(move)
    return root
