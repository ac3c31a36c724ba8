"""GPU peak throughput tables, dense vs 2:4 sparse, with their source.

Vendors often headline the *with sparsity* figure, which only applies to weights pruned
to the 2:4 structured-sparsity pattern. Ordinary (dense) matmuls run at half of it: the
guide's "RTX 4090: FP16 ~660 TFLOPS, INT8 ~1,300 TOPS" quotes the sparse column.
A tensor-core rate also depends on the accumulator: on GeForce Ada, FP16 and FP8 run at
half rate when they accumulate in FP32, so the whitepaper lists both accumulations.

    from qlora_lab.sizing.gpu_specs import RTX_4090, spec_table
    spec_table(RTX_4090)
"""

from __future__ import annotations

from dataclasses import dataclass

RTX_4090_SOURCE = ("NVIDIA Ada GPU Architecture whitepaper (v2.1), appendix A, table 'GeForce RTX 4090' "
                   "(FP8 with FP32 accumulate as corrected in v2.02, its footnote 4)")


@dataclass(frozen=True)
class PeakThroughput:
    """One row of a vendor table: peak rate in TFLOP/s (or TOP/s for integers)."""

    precision: str
    dense: float  # TFLOP/s or TOP/s, ordinary matmuls
    sparse: float | None  # with 2:4 structured sparsity; None when not offered
    unit: str = "TFLOPS"

    @property
    def sparsity_factor(self) -> float | None:
        """How much larger the sparse headline is than the dense rate (2.0 on Ada)."""
        return None if self.sparse is None else self.sparse / self.dense


@dataclass(frozen=True)
class GpuSpec:
    """Peak rates of one GPU, with the document they come from."""

    name: str
    rows: tuple[PeakThroughput, ...]
    source: str
    cuda_cores: int = 0  # the chip's counts, to recompute a peak as units × rate × clock
    tensor_cores: int = 0
    boost_clock_ghz: float = 0.0

    def ops_per_unit_per_clock(self, precision: str) -> float:
        """FLOP (or OP) per core per clock implied by a dense peak: peak / (units × clock).

        The FP32 row counts CUDA cores (one FMA = 2 FLOP per clock), the others tensor cores.
        """
        row = self.row(precision)
        units = self.cuda_cores if "CUDA cores" in precision else self.tensor_cores
        if not units or not self.boost_clock_ghz:
            raise ValueError(f"{self.name} has no core counts or clock to divide by")
        return row.dense * 1e12 / (units * self.boost_clock_ghz * 1e9)

    def row(self, precision: str) -> PeakThroughput:
        """The row for `precision` (e.g. "INT8 tensor")."""
        for r in self.rows:
            if r.precision == precision:
                return r
        known = ", ".join(r.precision for r in self.rows)
        raise ValueError(f"precision={precision!r} is not in the {self.name} table; known: {known}")


RTX_4090 = GpuSpec(
    name="NVIDIA GeForce RTX 4090",
    rows=(
        PeakThroughput("FP32 (CUDA cores)", 82.6, None),
        PeakThroughput("TF32 tensor", 82.6, 165.2),
        PeakThroughput("FP16/BF16 tensor, FP32 accumulate", 165.2, 330.4),
        PeakThroughput("FP16 tensor, FP16 accumulate", 330.3, 660.6),
        PeakThroughput("FP8 tensor, FP32 accumulate", 330.3, 660.6),
        PeakThroughput("FP8 tensor, FP16 accumulate", 660.6, 1321.2),
        PeakThroughput("INT8 tensor", 660.6, 1321.2, unit="TOPS"),
    ),
    source=RTX_4090_SOURCE,
    cuda_cores=16384,  # appendix A: 128 SMs × 128 CUDA cores
    tensor_cores=512,  # 4 per SM
    boost_clock_ghz=2.52,
)

# What the seed guide claims (003_f7b6e111794e291a.txt, section 2), to compare with the table.
GUIDE_RTX_4090_CLAIMS: dict[str, float] = {
    "FP32 (CUDA cores)": 83.0,
    "FP16 tensor, FP16 accumulate": 660.0,
    "INT8 tensor": 1300.0,
}


def closest_column(spec: GpuSpec, precision: str, value: float) -> str:
    """Which column ("dense" or "sparse") of `spec` a quoted `value` matches best."""
    row = spec.row(precision)
    if row.sparse is None:
        return "dense"
    return "dense" if abs(value - row.dense) <= abs(value - row.sparse) else "sparse"


def spec_table(spec: GpuSpec) -> list[dict[str, object]]:
    """The table as rows of plain dicts (easy to print or turn into a DataFrame)."""
    return [
        {
            "précision": r.precision,
            "dense": r.dense,
            "avec sparsité 2:4": r.sparse if r.sparse is not None else "–",
            "unité": r.unit,
        }
        for r in spec.rows
    ]


def format_table(spec: GpuSpec) -> str:
    """A plain-text table with the source underneath, for notebooks and the CLI."""
    lines = [f"{spec.name}", f"{'précision':38s} {'dense':>9s} {'sparse 2:4':>11s}"]
    for r in spec.rows:
        sparse = f"{r.sparse:.1f}" if r.sparse is not None else "–"
        lines.append(f"{r.precision:38s} {r.dense:9.1f} {sparse:>11s}  {r.unit}")
    lines.append(f"Source : {spec.source}")
    return "\n".join(lines)
