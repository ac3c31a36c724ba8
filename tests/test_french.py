"""French formatting (qlora_lab.french) against hand-written expectations and babel-free rules."""

import pytest

from qlora_lab.french import NBSP, THIN_NBSP, Tableau, duree, nombre, octets, plus_ou_moins, pourcentage, scientifique


@pytest.mark.parametrize(
    "value, decimals, expected",
    [
        (1234567.891, 1, f"1{THIN_NBSP}234{THIN_NBSP}567,9"),
        (297984, None, f"297{THIN_NBSP}984"),
        (4.127, 3, "4,127"),
        (0.000061, None, "0,0000610"),
        (-2.5, 1, "−2,5"),
        (999, None, "999"),
        (12.3456, None, "12,3"),
    ],
)
def test_nombre(value, decimals, expected):
    assert nombre(value, decimals) == expected


def test_nombre_refuses_booleans():
    with pytest.raises(TypeError):
        nombre(True)


@pytest.mark.parametrize(
    "n, expected",
    [(512, f"512{NBSP}octets"), (1024, f"1,0{NBSP}Kio"), (1_231_462, f"1,2{NBSP}Mio"), (24 * 2**30, f"24,0{NBSP}Gio")],
)
def test_octets_iec(n, expected):
    assert octets(n) == expected


def test_percentage_duration_spread():
    assert pourcentage(0.978) == f"97,8{NBSP}%"
    assert duree(3.456) == f"3,46{NBSP}s"
    assert duree(125) == f"2{NBSP}min{NBSP}05{NBSP}s"
    assert duree(3780) == f"1{NBSP}h{NBSP}03{NBSP}min"
    assert plus_ou_moins(0.631, 0.042) == f"0,63{NBSP}±{NBSP}0,04"
    with pytest.raises(ValueError):
        duree(-1)


def test_tableau_renders_french_cells_in_html_markdown_and_text():
    table = Tableau(
        [{"mode": "qlora", "pic": 3 * 2**20, "perte": 1.23456}, {"mode": "lora", "pic": 2**20}],
        colonnes={"mode": "Mode", "pic": "Pic mémoire", "perte": "Perte"},
        formats={"pic": octets, "perte": 3},
    )
    html = table._repr_html_()
    assert "<th>Pic mémoire</th>" in html and f"3,0{NBSP}Mio" in html and "1,235" in html
    assert "| –" in table._repr_markdown_() or "– |" in table._repr_markdown_()
    assert "1,235" in str(table) and "{" not in str(table)
    with pytest.raises(ValueError):
        Tableau([])


@pytest.mark.parametrize("value, digits, expected", [
    (6.103515625e-05, 3, "6,10·10⁻⁵"), (5.960464477539063e-08, 3, "5,96·10⁻⁸"),
    (-3.4028234663852886e38, 2, "−3,4·10³⁸"), (9.9996e-3, 3, "1,00·10⁻²"), (2.5, 2, "2,5"),
    (0.0, 3, "0"), (float("inf"), 3, "∞"),
])
def test_scientifique(value, digits, expected):
    assert scientifique(value, digits) == expected
