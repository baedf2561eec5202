import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from advbench.errors import AdvbenchError
from advbench.report import plots  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _logits(seed=0, n=60):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    z = rng.normal(size=(n, 2)) + np.where(y[:, None] == 1, [-2.0, 2.0], [2.0, -2.0])
    return z, y


def _check_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def _check_svg(path):
    text = path.read_text()
    assert "<svg" in text and text.rstrip().endswith("</svg>")


def _draw(kind, path):
    z, y = _logits()
    if kind == "logit_scatter":
        return plots.logit_scatter([("no softmax", z, y), ("softmax", z / 3, y), ("empty", z[:0], y[:0]),
                                    ("one class", z[:5], y[:5])], path)
    if kind == "roc_curves":
        fpr = np.linspace(0, 1, 11)
        return plots.roc_curves([("svm", fpr, np.sqrt(fpr)), ("cnn", fpr, fpr ** 0.2)], path)
    if kind == "heatmap":
        values = np.array([[10.0, 80.0, np.nan], [5.0, 50.0, 95.0]])
        return plots.heatmap("labels changed (%)", ["jpeg", "scaling"], ["normal", "fgsm", "cw"], values, path)
    return plots.accuracy_vs_cost([("1 op", 1, 0.8), ("2 ops", 2, 0.9), ("bad", 3, 0.7), ("all", 17, 0.95)], path)


KINDS = ["logit_scatter", "roc_curves", "heatmap", "accuracy_vs_cost"]


@pytest.mark.parametrize("kind", KINDS)
def test_writes_png(tmp_path, kind):
    path = tmp_path / "sub" / f"{kind}.png"
    assert _draw(kind, path) == path
    _check_png(path)


@pytest.mark.parametrize("kind", KINDS)
def test_writes_svg(tmp_path, kind):
    path = tmp_path / f"{kind}.svg"
    assert _draw(kind, path) == path
    _check_svg(path)


def test_unknown_suffix_and_bad_shapes_are_errors(tmp_path):
    z, y = _logits()
    with pytest.raises(AdvbenchError, match="fig.txt: cannot tell the figure format"):  # a user error: exit 2
        plots.logit_scatter([("x", z, y)], tmp_path / "fig.txt")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plots.logit_scatter([("x", z[:, :1], y)], tmp_path / "fig.png")
    with pytest.raises(ValueError, match="shape"):
        plots.heatmap("t", ["a"], ["b", "c"], np.zeros((2, 2)), tmp_path / "h.png")
    assert not list(tmp_path.iterdir())


def test_no_pyplot_state_left_behind(tmp_path):
    import sys

    z, y = _logits()
    plots.logit_scatter([("x", z, y)], tmp_path / "a.png")
    if "matplotlib.pyplot" in sys.modules:  # another test may have imported it; then no figure must leak
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def _security_panels():
    budgets = [0.01, 0.03, 0.1]
    det = [("svm", budgets, [0.9, 0.6, np.nan], [0.8, 0.5, np.nan], [0.95, 0.7, np.nan])]
    system = [("svm", budgets, [0.1, 0.4, 0.9], [0.05, 0.3, 0.8], [0.2, 0.5, 0.95]),
              ("(attack alone)", budgets, [0.5, 0.9, 1.0], [np.nan] * 3, [np.nan] * 3)]
    return [("pgd (oblivious)", [det, system]), ("eot-pgd (adaptive vs svm)", [det[:1], system]),
            ("one budget", [[("svm", [0.03], [0.5], [0.4], [0.6])], []])]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_security_curves_and_subset_lines(tmp_path, suffix):
    path = plots.security_curves(_security_panels(), tmp_path / f"security{suffix}", max_cols=2)
    _check_png(path) if suffix == ".png" else _check_svg(path)
    cost = plots.accuracy_vs_cost([("all", 38, 0.95)], tmp_path / f"cost{suffix}",
                                  curves=[("subset search", [1, 2, 3], [0.8, 0.9, 0.93])])
    _check_png(cost) if suffix == ".png" else _check_svg(cost)


def test_security_curves_reject_a_panel_without_every_row(tmp_path):
    with pytest.raises(ValueError, match="one list of series per row"):
        plots.security_curves([("x", [[]])], tmp_path / "s.png")
    with pytest.raises(ValueError, match="at least one panel"):
        plots.security_curves([], tmp_path / "s.png")
