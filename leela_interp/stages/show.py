"""``stage=show puzzle_id=ID``: one puzzle's drill-down, as the report's gallery shows it.

Writes ``<out_dir>/show/<ID>.html`` (self-contained, like ``report.html``) and each picture of
:func:`leela_interp.outputs.views.drilldown` as ``<out_dir>/show/<ID>/<name>.svg``, ``.png`` and
``.pdf`` (``name``: ``card``, ``strip``, ``attention``; a picture that cannot be drawn, e.g.
attention on a net without heads, is left out and its reason is in the page). The attention
row needs the network: ``model.path`` when it is the one ``patching.h5`` was computed with,
else that file's recorded path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from leela_interp.errors import ConfigError
from leela_interp.outputs import board_figures as bf
from leela_interp.outputs import views
from leela_interp.outputs.report import html_page
from leela_interp.stages.common import run_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Write the drill-down of ``cfg.puzzle_id``; returns the HTML page's path.

    Raises:
        ConfigError: no ``puzzle_id``, or one that is not in ``puzzles.h5``.
    """
    pid = cfg.get("puzzle_id")
    if pid is None or str(pid) == "":
        raise ConfigError("stage=show needs puzzle_id=ID (a Lichess id of the run folder's "
                          "puzzles.h5; report.html's gallery lists some)")
    out = run_dir(cfg)
    pid = str(pid)
    net = None
    if views.top_head(out) is not None:
        try:
            net = views.network(out, cfg.model.path)
        except ConfigError as e:
            log.warning("%s", e)
    panels = views.drilldown(out, pid, net=net)
    folder = out / "show" / pid
    for panel in panels:
        if panel.svg is not None:
            for suffix in bf.SAVE_SUFFIXES:
                bf.save(panel.svg, folder / f"{panel.name}{suffix}")
    page = out / "show" / f"{pid}.html"
    page.write_text(html_page([f"# Puzzle `{pid}`: `{out}`", "",
                               f"Pictures as SVG, PNG and PDF in `show/{pid}/`.", "", *panels],
                              title=f"puzzle {pid}: {out}"))
    log.info("wrote %s and %s/", page, folder)
    print(page)
    return page
