"""Benchmarks of the ingestion path against its peers and against the API budget (``make bench``).

Not part of the package or of ``make test``: ``python -m bench.run`` runs the suite and writes
``docs/BENCHMARKS.md`` from the JSON it measured; ``python -m bench.run --smoke`` is the seconds-long version
the test suite runs to keep this code working.
"""
