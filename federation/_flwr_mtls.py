"""Run Flower's ``flwr`` CLI presenting the vendor's client certificate (mutual TLS).

``python -m federation._flwr_mtls ARGS…`` is ``flwr ARGS…`` whose HTTPS connections also carry
the certificate and key named by ``SONOFED_CLIENT_CERT`` and ``SONOFED_CLIENT_KEY``. Flower 1.42's
CLI verifies the server against the connection's root certificates but has no setting for a
client certificate; the proxy in front of the SuperLink (:mod:`federation.proxy`) requires one
for the Control API. The certificate is added to the ``ssl.SSLContext`` Flower builds, in its
protobuf-over-HTTP client (``flwr.supercore.protobuf.client.ProtobufClient``), the one place all
of its HTTPS clients are made; nothing else changes.
"""

from __future__ import annotations

import os
import ssl
import sys
from typing import Any

CERT_ENV = "SONOFED_CLIENT_CERT"
KEY_ENV = "SONOFED_CLIENT_KEY"


def present_client_certificate(cert: str, key: str) -> None:
    """Make every HTTPS client of Flower in this process present ``cert``/``key``."""
    from flwr.supercore.protobuf import client as protobuf_client

    original = protobuf_client.ProtobufClient.__init__

    def init(self: Any, base_url: str, *args: Any, verify: Any = True, **kwargs: Any) -> None:
        if base_url.startswith("https://"):
            if not isinstance(verify, ssl.SSLContext):
                cafile = verify if isinstance(verify, str) else None
                verify = ssl.create_default_context(cafile=cafile)
            verify.load_cert_chain(cert, key)
        original(self, base_url, *args, verify=verify, **kwargs)

    protobuf_client.ProtobufClient.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    """``flwr`` with the client certificate of the environment."""
    cert, key = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
    if not cert or not key:
        sys.exit(f"{CERT_ENV} and {KEY_ENV} must name the vendor's client certificate and key")
    present_client_certificate(cert, key)
    from flwr.cli.app import app

    sys.argv[0] = "flwr"
    app()


if __name__ == "__main__":
    main()
