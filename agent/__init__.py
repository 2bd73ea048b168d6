"""Per-host side of llumctl: the agent, its engine instances and their llumlets.

This is the only package that imports vllm or torch, and only lazily, so the light
install (no extras) can still run the agent with simulated engines.
"""
