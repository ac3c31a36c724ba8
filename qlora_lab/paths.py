"""Where the course's shipped assets live, so no module hard-codes a path."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
# The embedded default model (a mini CodeLlama trained offline on the stdlib), as a
# Hugging Face model directory: config.json, model.safetensors, tokenizer files, README.md.
EMBEDDED_MODEL_DIR = ASSETS_DIR / "mini-codellama"
# Repository root when running from a checkout (notebooks, benchmarks/results, book).
REPO_DIR = PACKAGE_DIR.parent
BENCHMARK_RESULTS_DIR = REPO_DIR / "benchmarks" / "results"
