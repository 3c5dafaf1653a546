"""Fixtures of the evaluation tests."""

import pytest

from cnn_flax.evaluation import classification, files


@pytest.fixture
def captured_figures(monkeypatch):
    """The figures the evaluation modules save, kept for inspection (files are still written)."""
    figures = []
    real_save = files.save_figure

    def save(figure, path, **kwargs):
        figures.append(figure)
        real_save(figure, path, **kwargs)

    monkeypatch.setattr(classification, "save_figure", save)
    monkeypatch.setattr(files, "save_figure", save)
    return figures
