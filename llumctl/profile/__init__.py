"""`llumctl profile`: measure a real engine and write a simulator latency profile.

`measure` drives the engine (prefill by prompt length, decode step by batch size and
resident tokens, KV capacity from its metrics, loopback transfer rate), with `warming`
(how much slower a host runs after idling) and `transfer`; `fit` turns the
points into `LatencyProfile` coefficients (pure, no I/O); `output` writes the file.
"""
