"""The OpenAI-compatible embedding server (`eft serve`)."""
