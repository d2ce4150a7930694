"""Reference implementations that tests and benchmarks compare the library against: the
originals' slow ways (per pixel, per instance, per example) and helpers only tests need.

Nothing in src/ imports this package. It is imported as `reference`: pytest puts tests/ on
sys.path for tests/conftest.py (its default `prepend` import mode), and bench scripts append
tests/ to theirs.
"""
