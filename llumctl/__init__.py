"""llumctl: a cluster manager for LLM serving with Llumnix-style dynamic scheduling.

The control plane lives here and never imports torch or vllm; the per-host side is the
`agent` package.
"""

__version__ = "0.1.0"
