"""vLLM, in its own environment, reached over HTTP: the server process, its client, and the environment check."""
