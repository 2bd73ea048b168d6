"""Harness of the benchmark suite: processes by PID, engines, peers, machine facts."""
