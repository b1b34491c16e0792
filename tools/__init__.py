"""Tools around the pipeline (not DVC stages): benchmarks, GPU checks, the standalone evaluator,
the plots page, the metrics check."""
