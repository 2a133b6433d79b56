"""Service-time models: how long a batch (or an LLM engine iteration) takes on a card."""
