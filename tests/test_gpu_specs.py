"""The RTX 4090 table: dense is half of sparse, and the guide quotes the sparse column."""

import pytest

from qlora_lab.sizing.gpu_specs import GUIDE_RTX_4090_CLAIMS, RTX_4090, closest_column, format_table, spec_table


@pytest.mark.parametrize("row", [r for r in RTX_4090.rows if r.sparse is not None], ids=lambda r: r.precision)
def test_sparse_is_twice_dense(row):
    assert row.sparsity_factor == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize(
    "precision, dense",
    [("FP32 (CUDA cores)", 82.6), ("FP16/BF16 tensor, FP32 accumulate", 165.2),
     ("FP16 tensor, FP16 accumulate", 330.3), ("INT8 tensor", 660.6)],
)
def test_dense_values_match_the_whitepaper(precision, dense):
    assert RTX_4090.row(precision).dense == dense


@pytest.mark.parametrize("precision, expected", [("FP16 tensor, FP16 accumulate", "sparse"), ("INT8 tensor", "sparse"),
                                                 ("FP32 (CUDA cores)", "dense")])
def test_guide_claims_are_the_sparse_column(precision, expected):
    assert closest_column(RTX_4090, precision, GUIDE_RTX_4090_CLAIMS[precision]) == expected


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision='FP64'"):
        RTX_4090.row("FP64")


def test_table_carries_its_source():
    assert "whitepaper" in RTX_4090.source.lower()
    assert RTX_4090.source in format_table(RTX_4090)
    assert len(spec_table(RTX_4090)) == len(RTX_4090.rows)
