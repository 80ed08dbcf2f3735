"""The one exception hierarchy of intelhub.

Every error the project raises on purpose is an :class:`IntelhubError`. Where a
subclass resembles a builtin it also derives from it (``DecodeError`` is a
``ValueError``), so generic callers keep working. Each error carries a stable
``code`` (used on the wire and in exit codes) and a message a person can act on.
"""

from __future__ import annotations


class IntelhubError(Exception):
    """Root of every intelhub error."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class DecodeError(IntelhubError, ValueError):
    """Bytes that are not a valid canonical intelhub encoding (see docs/protocol.md §2)."""

    code = "malformed"


class ValidationError(IntelhubError, ValueError):
    """Content that is well-formed but wrong; ``path`` names the field, e.g. ``assets[2].amount``."""

    code = "invalid_content"

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class InvalidPacket(IntelhubError):
    """A signature, decryption or commitment check failed.

    Deliberately opaque: which check failed is never revealed, so a packet cannot
    be used as an oracle (compare ``cryptography.fernet.InvalidToken``).
    """

    code = "invalid_packet"

    def __init__(self, message: str = "packet failed verification") -> None:
        super().__init__(message)


class UntrustedSigner(IntelhubError):
    """The signer's certificate is unknown, expired, revoked, or not of the claimed nation."""

    code = "untrusted_signer"


class FutureSkew(UntrustedSigner):
    """The packet says it was created further ahead of the verifier's clock than any verifier
    accepts (its signer cannot be judged at a time that has not come): the sender's clock is wrong."""

    code = "clock_skew"


class KeyFileError(IntelhubError, ValueError):
    """A key, certificate, roster or revocation file cannot be used."""

    code = "bad_key_file"


class ConfigError(IntelhubError, ValueError):
    """A configuration file or option is wrong; the message names the field."""

    code = "bad_config"


class ProtocolError(IntelhubError):
    """A peer broke the wire protocol, or the hub answered with an error code."""

    code = "protocol"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class StoreError(IntelhubError):
    """A durable store refused an operation (disk full, read-only, corrupt)."""

    code = "store"


class LogError(IntelhubError, ValueError):
    """A Merkle proof, checkpoint, signed note, promise or cosignature is malformed or does not verify.

    Unlike :class:`InvalidPacket` the message is precise (which proof step, which
    line, which signer): everything checked here is public, so there is no oracle
    to hide, and an auditor needs to know what exactly the hub got wrong.
    """

    code = "log"
