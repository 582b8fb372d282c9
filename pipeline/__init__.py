"""pose-service pipeline: detection, mesh recovery and tracking without any serving framework.

Nothing in this package imports Ray; `deployments/` wraps these objects for Ray Serve.
"""

__version__ = "0.1.0"
