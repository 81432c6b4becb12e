"""Benchmarks: a config file in, cached and resumable runs, Markdown and HTML reports out.

``unlearnkit bench --config smoke --out DIR`` runs :func:`run_benchmark` and then
:func:`write_report`; ``unlearnkit report DIR`` rewrites the reports from the stored results.
"""

from .config import BenchConfig, load_bench_config, resolve_config_path
from .report import write_report
from .runner import RunSummary, load_records, result_path, run_benchmark

__all__ = ["BenchConfig", "RunSummary", "load_bench_config", "load_records", "resolve_config_path",
           "result_path", "run_benchmark", "write_report"]
