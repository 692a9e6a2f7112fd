"""The HTTP API, thin: the FastAPI app (its routes, error answers and status bodies) and
the token fast path beside it, the request guard (callers, keys, headers), response
shapes, the docs, and live reload."""
