"""The RTX 4090 table: dense is half of sparse, and the guide quotes the sparse column."""

import pytest

from qlora_lab.sizing.gpu_specs import GUIDE_RTX_4090_CLAIMS, RTX_4090, closest_column, format_table, spec_table


# The whitepaper's hardware counts (appendix A): 16384 CUDA cores, 512 tensor cores (4 per
# SM), 2520 MHz boost clock. Peak = units × operations per unit per clock × clock.
CUDA_CORES, TENSOR_CORES, BOOST_HZ = 16384, 512, 2.52e9
# FLOP (or OP) per clock: a CUDA core does one FMA (2 FLOP); an Ada tensor core does 128
# dense FP16 FMAs per clock (half rate with FP32 accumulation on GeForce), 256 for FP8/INT8
# (FP8 also at half rate with FP32 accumulation), 32 for TF32.
PER_CLOCK = {"FP32 (CUDA cores)": (CUDA_CORES, 2), "TF32 tensor": (TENSOR_CORES, 64),
             "FP16/BF16 tensor, FP32 accumulate": (TENSOR_CORES, 128),
             "FP16 tensor, FP16 accumulate": (TENSOR_CORES, 256), "FP8 tensor, FP32 accumulate": (TENSOR_CORES, 256),
             "FP8 tensor, FP16 accumulate": (TENSOR_CORES, 512), "INT8 tensor": (TENSOR_CORES, 512)}


@pytest.mark.parametrize("row", RTX_4090.rows, ids=lambda r: r.precision)
def test_table_equals_units_times_rate_times_clock(row):
    """Every table entry recomputed from the chip's counts; sparse is twice dense (2:4 skips half)."""
    units, per_clock = PER_CLOCK[row.precision]
    peak = units * per_clock * BOOST_HZ / 1e12
    assert row.dense == pytest.approx(peak, abs=0.05)  # published to one decimal
    if row.sparse is not None:
        assert row.sparse == pytest.approx(2 * peak, abs=0.15)  # 2 × the rounded dense value
        assert row.sparsity_factor == pytest.approx(2.0, rel=1e-3)
    assert set(PER_CLOCK) == {r.precision for r in RTX_4090.rows}
    assert RTX_4090.ops_per_unit_per_clock(row.precision) == pytest.approx(per_clock, rel=1e-3)


@pytest.mark.parametrize(
    "precision, dense",
    [("FP32 (CUDA cores)", 82.6), ("FP16/BF16 tensor, FP32 accumulate", 165.2),
     ("FP16 tensor, FP16 accumulate", 330.3), ("INT8 tensor", 660.6), ("TF32 tensor", 82.6),
     ("FP8 tensor, FP32 accumulate", 330.3), ("FP8 tensor, FP16 accumulate", 660.6)],
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


def test_a_table_without_core_counts_cannot_give_a_rate_per_clock():
    from qlora_lab.sizing.gpu_specs import GpuSpec

    bare = GpuSpec("bare", RTX_4090.rows, "no counts")
    with pytest.raises(ValueError, match="no core counts"):
        bare.ops_per_unit_per_clock("INT8 tensor")


def test_table_carries_its_source():
    assert "whitepaper" in RTX_4090.source.lower()
    assert RTX_4090.source in format_table(RTX_4090)
    rows = spec_table(RTX_4090)
    assert [r["précision"] for r in rows] == list(PER_CLOCK)  # every row, in the table's order
    assert [r["dense"] for r in rows] == [r.dense for r in RTX_4090.rows]
