"""API keys for machine clients: the ingress gateway's external authorizer.

A key stands in for a token: it names one tenant and its scopes. Keys are minted by
``ragmesh keys create``, kept only as SHA-256 digests in a key file (a Secret), and checked
by this service for every ragmesh request that carries ``x-api-key`` (Istio CUSTOM action).
"""
