"""The application as an object, for tools that need one rather than a builder:
``serve build deployments.graph:app -o generated.yaml``.

Built with the ``full`` profile and no cluster (so no GPU shares): the generated file lists the
deployment options from the code; ``serve_config.yaml`` is the maintained configuration.
"""

from __future__ import annotations

from .app import AppArgs, build_app

app = build_app(AppArgs(profile="full", tracker=False))
