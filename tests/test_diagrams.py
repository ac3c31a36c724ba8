"""The course's own QLoRA diagrams draw every component they name."""

import matplotlib

matplotlib.use("Agg")

import pytest

from qlora_lab.course.diagrams import figure_texts, pipeline_figure, qlora_architecture_figure


@pytest.mark.parametrize(
    "build, must_mention",
    [
        (qlora_architecture_figure, ["NF4", "double quantification", "optimiseur paginé", "A (r × d_in)", "B (d_out × r)"]),
        (pipeline_figure, ["données", "tokenisation", "QLoRA", "entraînement", "métriques"]),
    ],
    ids=["architecture", "pipeline"],
)
def test_figure_names_each_component(build, must_mention, tmp_path):
    import matplotlib.pyplot as plt

    fig = build()
    text = "\n".join(figure_texts(fig))
    for word in must_mention:
        assert word in text, word
    path = tmp_path / "fig.png"
    fig.savefig(path)
    plt.close(fig)
    assert path.stat().st_size > 10_000  # a real picture, not an empty canvas
