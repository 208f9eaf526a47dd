"""Benchmarks of the control plane against real Envoy and nginx: `python -m bench`.

Scripts, never timed tests: each benchmark writes `bench/results/NAME.json`, `NAME.md` and
`NAME.png`, and every figure that matters is a ratio against a reference measured in the
same run (Envoy's own time for the same files, or a run without changes), because absolute
times on a shared machine drift.
"""
