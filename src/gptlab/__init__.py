"""gptlab: train GPT-2-small-class base models from scratch and measure which recipe changes help."""

__version__ = "0.1.0"


class GptlabError(Exception):
    """A user-facing error: printed as one line by the CLI, no traceback."""
