"""The web service without Ray: the HTTP API, the job system, keys and callbacks.

It runs the models through a small protocol (`service.api.backend.ModelBackend`), so the same
application is served by Ray Serve's ``Ingress`` (`deployments`) or by any other host.
"""
