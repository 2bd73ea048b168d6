"""`llumctl bench`: a load generator for any OpenAI-compatible endpoint.

It sends a workload (the simulator's generators or a JSONL trace) as streaming completion
requests at their arrival times and records, per request, time to first token (TTFT), time
per output token (TPOT), end-to-end latency and errors. The per-request log is JSONL in the
simulator's trace format plus the measurements, so `llumctl sim --trace` can replay it.
"""
