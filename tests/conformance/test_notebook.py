"""Conformance: in Jupyter, the model's board draws live (a notebook run by nbclient gets images).

Most d2l readers run the book in Jupyter. The notebook here is what they
paste: train the concise model; the cell's output must hold the board's
figure, drawn in place (one image, updated), and the board must not draw
in a plain script (see ``test_d2l_surface``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def test_a_fit_in_jupyter_shows_the_board(backend_name: str) -> None:
    cells = [
        f"from d2lx import {backend_name} as d2l",
        "data = d2l.SyntheticRegressionData(w=[2, -3.4], b=4.2)\n"
        "model = d2l.LinearRegression(lr=0.03)\n"
        "trainer = d2l.Trainer(max_epochs=3)\n"
        "trainer.fit(model, data)",
        "board = d2l.ProgressBoard('x')\n"
        "for x in range(50):\n"
        "    board.draw(x, x ** 0.5, 'sqrt', every_n=5)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env_before = dict(os.environ)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)

    def images(cell: Any) -> list[dict[str, Any]]:
        return [o for o in cell.outputs if any(k.startswith("image/") for k in o.get("data", {}))]

    fit_images, board_images = images(nb.cells[1]), images(nb.cells[2])
    assert len(fit_images) == 1, nb.cells[1].outputs  # one figure, redrawn in place
    assert len(board_images) == 1, nb.cells[2].outputs
    figure = fit_images[0]["data"].get("image/svg+xml", "")
    assert "train_loss" in figure and "val_loss" in figure  # the legend of d2l's curves
    assert "sqrt" in board_images[0]["data"].get("image/svg+xml", "")
    printed = "".join(o.get("data", {}).get("text/plain", "") for o in nb.cells[1].outputs)
    assert "History(3 epochs" in printed
