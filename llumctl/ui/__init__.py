"""Pure rich renderers for the CLI (top, status, up summary)."""
