"""Load generator and side-by-side benchmarks for chatserv and IRC peers (issue 3).

Run ``python -m benchmarks --help``; ``docs/PERFORMANCE.md`` has the results.
"""
