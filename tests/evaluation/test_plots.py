"""The report's pictures: what a person reads on them (tick labels, legend placement), not just that a PNG exists."""

from __future__ import annotations

import pytest

from imagerec.evaluation import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions draw, kept open and rendered so their tick labels are final."""
    figures = []
    save = plots._save

    def keep(fig, path):
        fig.canvas.draw()
        figures.append(fig)
        out = save(fig, path)
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def reliability_bins(counts):
    return [
        {
            "lower": i / 10,
            "upper": (i + 1) / 10,
            "count": c,
            "accuracy": i / 10 + 0.05,
            "confidence": i / 10 + 0.06,
        }
        for i, c in enumerate(counts)
    ]


def test_reliability_axis_labels_are_plain_numbers(drawn, tmp_path):
    path = plots.reliability_png(
        reliability_bins([0, 0, 3, 12, 25, 40, 60, 120, 400, 6000]), 0.01, tmp_path / "r.png"
    )
    assert path.stat().st_size > 0
    (fig,) = drawn
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels() + ax.get_xticklabels()]
    assert labels and not [s for s in labels if "$" in s or "\\" in s], labels
    hist = fig.axes[1]
    assert {"1", "10", "100", "1,000"} <= {t.get_text() for t in hist.get_yticklabels()}


def test_reliability_legend_does_not_cover_the_bars(drawn, tmp_path):
    plots.reliability_png(reliability_bins([5, 5, 5, 5, 5, 5, 5, 5, 5, 5]), 0.01, tmp_path / "r.png")
    (fig,) = drawn
    ax = fig.axes[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    plot_area = ax.get_window_extent(renderer)
    assert legend.y0 >= plot_area.y1 - 1, "the legend overlaps the plot area"


def test_class_names_with_dollar_signs_stay_literal(drawn, tmp_path):
    plots.confusion_matrix_png([[3, 1], [0, 4]], ["$5 bill", "$x$"], tmp_path / "cm.png")
    fig = drawn[0]
    texts = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()}
    assert {"$5 bill", "$x$"} <= texts
