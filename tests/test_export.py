"""The slide export: a self-contained HTML report and a zip, from real checkpoints."""

import io
import zipfile

import numpy as np
import pytest

from bloodviz.checkpoints import list_checkpoints
from bloodviz.compare import leaderboard
from bloodviz.export import cam_grid, render_html, render_zip, report_figures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def view():
    ckpts = [c for c in list_checkpoints(dataset_key="pbc-64") if c.bench()][:2]
    return ckpts, leaderboard(ckpts, "test")


def test_html_report_is_self_contained_and_says_what_it_shows(view):
    ckpts, board = view
    figures = report_figures(ckpts, board, "test")
    assert list(figures) == [
        "tradeoff",
        "per-class-f1",
        *[f"confusion-{c.name}" for c in ckpts],
    ]
    cell = np.full((64, 64, 3), 200, np.uint8)
    page = render_html(
        title="bloodviz: pbc-64 / test",
        header=["Dataset pbc-64, split test", "made by a test"],
        board=board,
        figures=figures,
        images={"Grad-CAM": (cell, "a blank cell")},
    )
    assert page.index("Dataset pbc-64, split test") < page.index("<h2>Leaderboard")
    # plotly.js is inlined, once: the file opens offline
    assert 'src="https://cdn.plot.ly' not in page
    assert page.count("Plotly.newPlot(") == len(figures)
    assert 3_000_000 < len(page) < 2 * 3_000_000 + 2_000_000
    assert "data:image/png;base64," in page
    for ckpt in ckpts:
        assert ckpt.run.display_name in page


def test_zip_holds_the_report_the_table_and_each_figure(view):
    ckpts, board = view
    figures = report_figures(ckpts, board, "test")
    data = render_zip("<html></html>", board, figures, static=False)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {"report.html", "leaderboard.csv", "figures/README.txt"} <= set(names)
    assert {f"figures/{name}.json" for name in figures} <= set(names)


def test_static_figures_where_kaleido_and_chromium_run(view):
    import shutil

    if not shutil.which("chromium"):
        pytest.skip("no chromium for kaleido")
    ckpts, board = view
    figures = report_figures(ckpts, board, "test")
    names = zipfile.ZipFile(io.BytesIO(render_zip("x", board, figures))).namelist()
    assert "figures/tradeoff.svg" in names and "figures/tradeoff.png" in names
    assert "figures/README.txt" not in names


def test_cam_grid_has_one_tile_per_model(view):
    ckpts, _ = view
    grid = cam_grid(ckpts, np.full((64, 64, 3), 180, np.uint8), side=96)
    assert grid.shape == (96, 96 * (1 + len(ckpts)), 3)
