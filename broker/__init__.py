"""broker: a local credential-broker sidecar.

It logs in to OAuth2 identity providers once for every process on the host,
refreshes each token in the background before it expires, and serves the
current bearer token on localhost (``GET /token/<provider>``).

Layers, imports pointing only downwards:

* ``config``, ``secrets``: the YAML file and where secrets come from.
* ``protocols``: each provider's wire protocol; builds requests and parses
  responses, no I/O.
* ``schedule``, ``tokens``, ``errors``: pure policy and value types.
* ``manager``: the only module that talks to identity providers; owns the
  refresh tasks and single-flight.
* ``app``, ``cli``: the HTTP API and the ``broker`` command.
* ``fakes``: fake identity providers that speak the real protocols, for the
  demo and for anyone testing against the broker.
"""

__version__ = "0.1.0"
