"""The refresh engine: the only code that talks to identity providers.

``manager`` owns the providers and their refresh loops; ``token_request`` is one
token request (lease, single flight, grant fallback, persistence); ``exchange`` one
HTTP exchange with its limits; ``store`` is the storage and coordination seam (the
:class:`~broker.engine.store.TokenStore` protocol), ``state`` its state directory,
``state_file`` the format of one file in it and ``fingerprint`` the login a file is for.
"""
