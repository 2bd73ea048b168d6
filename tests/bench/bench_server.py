"""Settings of the vLLM OpenAI server the bench/profile tests run against (conftest.py)."""

NUM_BLOCKS = 64
BLOCK_SIZE = 32
MAX_MODEL_LEN = 1024
