"""Benchmarks of the groups and export services against the real broker and database.

`python -m bench --quick` (about a minute) or `python -m bench --full` (about ten
minutes). Not a test: pytest only collects `tests/`. See BENCHMARKS.md.
"""
