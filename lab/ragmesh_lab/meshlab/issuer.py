"""The local mesh's token issuer: an RSA key pair, its JWKS, and signed JWTs (RS256).

In a cluster, end users' tokens come from the identity provider that the ingress
gateway's RequestAuthentication names (``mesh/authentication.yaml``: issuer, jwksUri,
audiences). The local mesh keeps that issuer's name and audiences and verifies tokens
against this issuer's key instead: ``ragmesh token`` mints them for development. The
private key stays in ``<data-dir>/pki/issuer`` (mode 0600), made once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class LocalIssuer:
    directory: Path

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / "issuer.key"
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        self.key = loaded

    @property
    def jwk(self) -> dict[str, str]:
        numbers = self.key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
        # RFC 7638 thumbprint as the key id
        thumbprint = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
        return {
            **jwk,
            "kid": b64url(hashlib.sha256(thumbprint).digest()),
            "alg": "RS256",
            "use": "sig",
        }

    def jwks_file(self) -> Path:
        """The JWKS (public key only) for the gateway's jwt_authn filter."""
        path = self.directory / "jwks.json"
        path.write_text(json.dumps({"keys": [self.jwk]}))
        return path

    def mint(
        self,
        *,
        issuer: str,
        audience: str,
        subject: str,
        tenant: str | None,
        scopes: Sequence[str],
        ttl: float = 3600.0,
        not_before: float | None = None,
        kid: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed JWT: ``scope`` is a list (Istio matches list-typed claims element-wise);
        ``tenant`` None leaves the tenant claim out."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "scope": list(scopes),
            "iat": now,
            "nbf": int(not_before) if not_before is not None else now,
            "exp": now + int(ttl),
        }
        if tenant is not None:
            claims["tenant"] = tenant
        claims.update(extra or {})
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or self.jwk["kid"]}
        signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing + "." + b64url(signature)
