"""The server's request contract, pure (no torch, no HTTP): parsing and checking bodies, prompts, stop strings."""
