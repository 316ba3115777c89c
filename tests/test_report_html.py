"""report.html and stage=show's page open in headless Chromium with no errors and every image
drawn (scripts/check_report_html.py); skipped with the reason when Chromium is absent."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_pipeline import config, make_inputs

from leela_interp.errors import ConfigError
from leela_interp.stages import run_stages

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checker():
    """scripts/check_report_html.py as a module; skips without Chromium."""
    spec = importlib.util.spec_from_file_location("check_report_html",
                                                  ROOT / "scripts" / "check_report_html.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.chromium()
    except FileNotFoundError as e:
        pytest.skip(f"{e} (bash scripts/setup.sh test installs it when run as root)")
    return module


def assert_loads_cleanly(checker, page: Path) -> list[dict]:
    result = checker.check(page)
    assert result["errors"] == [] and result["external"] == [], page
    assert result["images"], page
    for image in result["images"]:
        assert image["complete"] and min(image["natural"]) > 0 and min(image["shown"]) > 0, image
    return result["images"]


def test_report_html_loads_with_no_errors_and_every_image_drawn(small_run, checker):
    images = assert_loads_cleanly(checker, small_run / "report.html")
    figures = sorted((small_run / "figures").glob("*.png"))
    gallery = re.findall(r"^### Puzzle", (small_run / "report.md").read_text(), re.M)
    assert not gallery  # the gallery is in report.html only
    page = (small_run / "report.html").read_text()
    puzzles = page.count("<h3 id=\"puzzle-")
    assert puzzles == 6  # report.gallery.k = 3: three largest effects, three random
    # every figure of figures/, then each gallery puzzle's card, strip and attention row
    assert [i["alt"] for i in images] == [p.stem for p in figures] + \
        ["card", "strip", "attention"] * puzzles


def test_the_check_sees_a_broken_image_and_anything_loaded_from_outside(small_run, checker,
                                                                      tmp_path):
    page = (small_run / "report.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace('<h2 id="gallery">', '<img src="data:image/png;base64,AAAA" '
                                   'alt="broken"><img src="http://127.0.0.1:9/x.png" alt="far">'
                                   '<h2 id="gallery">', 1))
    result = checker.check(broken)
    assert result["external"] == ["http://127.0.0.1:9/x.png"]
    assert any(e.startswith("csp: img-src") for e in result["errors"])
    sizes = {i["alt"]: i["natural"] for i in result["images"]}
    assert sizes["broken"] == [0, 0] and sizes["far"] == [0, 0]
    assert checker.main([str(broken)]) == 1
    shot = tmp_path / "gallery.png"
    assert checker.main([str(small_run / "report.html"), "--screenshot", str(shot),
                         "--at", "gallery", "--height", "300"]) == 0
    with Image.open(shot) as im:
        assert im.size == (1300, 300) and len(im.getcolors(256) or []) > 2  # not blank


def test_show_writes_one_puzzles_drilldown(small_run, checker, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    inputs = make_inputs(tmp_path)
    pid = re.search(r'<h3 id="puzzle-([a-z0-9]+)', (run / "report.html").read_text()).group(1)
    run_stages(config(inputs, run, "stage=show", f"puzzle_id={pid}",
                      f"model.path={tmp_path / 'no-such-net.pb.gz'}"))
    names = {"card", "strip", "attention"}  # the net: patching.h5's recorded path
    assert {p.name for p in (run / "show" / pid).iterdir()} == \
        {f"{n}{s}" for n in names for s in (".svg", ".png", ".pdf")}
    with Image.open(run / "show" / pid / "card.png") as im:
        assert min(im.info["dpi"]) >= 199.5
    images = assert_loads_cleanly(checker, run / "show" / f"{pid}.html")
    assert [i["alt"] for i in images] == ["card", "strip", "attention"]
    with pytest.raises(ConfigError, match="stage=show needs puzzle_id=ID"):
        run_stages(config(inputs, run, "stage=show"))
    with pytest.raises(ConfigError, match="puzzle 'nope' is not in"):
        run_stages(config(inputs, run, "stage=show", "puzzle_id=nope"))
