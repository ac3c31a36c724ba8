"""Reading benchmarks/results: GPU runs told from CPU runs, tables formatted."""

import json

import pytest

from qlora_lab.course import benchmark_results as br


@pytest.fixture
def results_dir(tmp_path):
    cpu = {"environment": {"cpu": "x86_64", "torch": "2.13.0+cpu"}, "rows": [{"mode": "lora", "s_per_step": 0.5}]}
    gpu = {"environment": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu128"},
           "rows": [{"mode": "qlora", "s_per_step": 0.12, "peak_gb": 3.0}]}
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    (tmp_path / "broken.json").write_text("{not json")
    return tmp_path


def test_load_results_reads_every_file_and_reports_broken_ones(results_dir):
    results = br.load_results(results_dir)
    assert sorted(results) == ["broken.json", "cpu.json", "gpu.json"]
    assert "error" in results["broken.json"]


def test_only_the_gpu_run_is_a_gpu_result(results_dir):
    assert list(br.gpu_results(results_dir)) == ["gpu.json"]


@pytest.mark.parametrize("data, gpu", [({"device": "cuda:0"}, True), ({"environment": {"torch": "2.1+cpu"}}, False),
                                       ([1, 2], False), ({"environment": {"gpu": "NVIDIA A100"}}, True)])
def test_describes_gpu_run(data, gpu):
    assert br.describes_gpu_run(data) is gpu


def test_missing_folder_means_no_results(tmp_path):
    assert br.load_results(tmp_path / "absent") == {}


def test_format_rows(results_dir):
    rows = br.rows_of(br.load_results(results_dir)["gpu.json"])
    text = br.format_rows(rows)
    assert text.splitlines()[0].split() == ["mode", "s_per_step", "peak_gb"] and "0.12" in text
    assert br.format_rows([]) == "(aucune ligne)"
