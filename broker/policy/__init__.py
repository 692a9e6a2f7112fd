"""The rules, pure and table-tested: when to refresh and retry (``schedule``, with its
settings), and a provider's state and the callers' rate limit (``states``)."""
