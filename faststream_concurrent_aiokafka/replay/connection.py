"""How the replay connects: the broker's own settings, or servers and security given by hand.

Every client the replay opens (a consumer of the dead-letter topic, a producer, a consumer
that looks for copies an interrupted run made) connects with the same settings, SASL and SSL
included.
"""

import os
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka.helpers import create_ssl_context
from faststream.kafka import KafkaBroker

from faststream_concurrent_aiokafka.compat import faststream as faststream_compat

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PASSWORD_VARIABLE: Final = "KAFKA_SASL_PASSWORD"


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """Servers and security for the replay's clients, when no ``KafkaBroker`` is at hand.

    ``sasl_password`` may be left out and given in the ``KAFKA_SASL_PASSWORD`` environment
    variable (so it shows in no process list); ``ssl_cafile`` is the CA bundle that signed the
    brokers' certificates (the system's when None); ``ssl_certfile`` and ``ssl_keyfile`` are
    this client's certificate and key, for brokers that authenticate clients by TLS (mTLS).
    """

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            msg = f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}"
            raise ValueError(msg)
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                allowed = ", ".join(SASL_MECHANISMS)
                msg = f"{self.security_protocol} needs sasl_mechanism, one of {allowed}"
                raise ValueError(msg)
            if not self.sasl_username or self.password is None:
                msg = (
                    f"{self.security_protocol} needs sasl_username and a password "
                    f"(sasl_password or the {PASSWORD_VARIABLE} environment variable)"
                )
                raise ValueError(msg)
        else:
            given = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is not None
            ]
            if given:  # ignored otherwise: a connection without the security asked for
                msg = (
                    f"{', '.join(given)} given, but security_protocol is "
                    f"{self.security_protocol}: use SASL_PLAINTEXT or SASL_SSL"
                )
                raise ValueError(msg)
        ssl = [
            name
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
            if getattr(self, name) is not None
        ]
        if ssl and not self.security_protocol.endswith("SSL"):
            msg = (
                f"{', '.join(ssl)} given, but security_protocol is {self.security_protocol}: "
                "use SSL or SASL_SSL"
            )
            raise ValueError(msg)
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            msg = "ssl_keyfile given without ssl_certfile (the client certificate it belongs to)"
            raise ValueError(msg)

    @property
    def password(self) -> str | None:
        return (
            self.sasl_password
            if self.sasl_password is not None
            else os.environ.get(PASSWORD_VARIABLE)
        )

    def client_settings(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's clients."""
        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            settings |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.password,
            }
        if self.security_protocol.endswith("SSL"):
            settings["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return settings


def client_settings(connection: "KafkaConnection | KafkaBroker") -> dict[str, Any]:
    """aiokafka keyword arguments from either kind of connection."""
    if isinstance(connection, KafkaConnection):
        return connection.client_settings()
    return faststream_compat.connection_settings(connection)
