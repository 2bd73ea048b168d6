"""The benchmark suite (run it with `bench/run_all.sh`; see docs/benchmarks.md)."""
