"""The chess board as the network sees it: lc0's input planes (:mod:`~leela_interp.board.encoding`)
and its 1858-move policy index (:mod:`~leela_interp.board.policy`)."""
