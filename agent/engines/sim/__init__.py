"""Simulated engine ("sim"): the simulator's instance model stepped in real time."""

from agent.engines.sim.engine import SimEngine

__all__ = ["SimEngine"]
