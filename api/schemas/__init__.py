"""Request and response bodies of the API, one module per resource.

Request models derive from :class:`~api.schemas.base.RequestModel` (unknown fields refused, text
the store can hold); response models from :class:`~api.schemas.base.ResponseModel`. A response
never derives from a request model (or the reverse): what a client may send and what it gets
back change separately.
"""
