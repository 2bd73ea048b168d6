"""The controller daemon: OpenAI API, dispatch, policy loop, control API, metrics."""
