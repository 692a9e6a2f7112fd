"""broker: a local credential-broker sidecar.

It logs in to OAuth2 identity providers once for every process on the host,
refreshes each token in the background before it expires, and serves the
current bearer token on localhost (``GET /token/<provider>``).

The packages are the layers, imports pointing only downwards (checked by
``lint-imports``; the README's Development section has the diagram):
``server`` > ``web`` > ``engine`` > ``ops`` and ``protocols`` > ``config`` >
``policy`` > ``core``, under the entry points ``cli``, ``demo`` and ``probe``.
``client`` (the old name of the client helpers, broker_client: client/ in this repository)
and ``fakes`` stand beside them and import none of them.
"""

__version__ = "0.1.0"
