"""`llumctl up/down` over SSH: cluster file in, running agents out (see up.py, down.py)."""
