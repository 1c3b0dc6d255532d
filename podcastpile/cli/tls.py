"""The certificate `ppcli manager` serves HTTPS with, checked before anything starts, and the
CA the manager's own clients verify it with.

uvicorn would load a bad certificate only in the server process, as a traceback and a dead
server; here a missing file, a key of another certificate or an encrypted key is one line and
exit 2 first. The manager calls itself (health, setup, its CPU worker and their flow runs) and
must trust its own certificate: `--ca`/TLS_CA_FILE when given, else the certificate file itself
when it holds a self-signed certificate (a private one, or a chain with its root appended), else
the public CAs, as for a certificate from a public CA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from podcastpile.cli.common import EXIT_SETUP, fail
from podcastpile.config import Settings

if TYPE_CHECKING:
    from cryptography import x509


@dataclass(frozen=True)
class ServedTLS:
    """What the manager serves HTTPS with, as absolute paths, and the CA its own clients
    verify it with (None: the public CAs)."""

    cert: str
    key: str
    ca: str | None


class _EncryptedKey(Exception):
    """The key file asks for a passphrase; the manager has no one to ask it of."""


def _no_passphrase() -> NoReturn:
    raise _EncryptedKey


def served_tls(cert_option: str | None, key_option: str | None, ca_option: str | None,
               config: Settings) -> ServedTLS | None:
    """The certificate and key to serve (the options, else TLS_CERT_FILE and TLS_KEY_FILE),
    checked now as uvicorn would load them, so a missing file, a key of another certificate or
    an encrypted key is one line and exit 2 before anything starts. None: plain HTTP."""
    import ssl

    from cryptography import x509

    cert, key = cert_option or config.tls_cert_file, key_option or config.tls_key_file
    if not cert and not key:
        return None
    if not cert or not key:
        fail("HTTPS needs both the certificate and its key: --tls-cert FILE and --tls-key FILE "
             "(or TLS_CERT_FILE and TLS_KEY_FILE)", code=EXIT_SETUP)
    cert_path, key_path = (Path(name).expanduser().absolute() for name in (cert, key))
    certificate_pem = _read_tls_file(cert_path, "certificate")
    _read_tls_file(key_path, "key")  # ssl's own error would not say which file is missing
    try:
        chain = x509.load_pem_x509_certificates(certificate_pem)
    except ValueError:
        fail(f"no PEM certificate in {cert_path} (--tls-cert, TLS_CERT_FILE)", code=EXIT_SETUP)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=_no_passphrase)
    except _EncryptedKey:
        fail(f"the TLS key {key_path} is encrypted; the manager needs it without a passphrase "
             "(readable by the manager's user only)", code=EXIT_SETUP)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            fail(f"the TLS key {key_path} does not belong to the certificate {cert_path}", code=EXIT_SETUP)
        fail(f"cannot load the TLS key {key_path} for {cert_path}: no PEM private key in it, or not one "
             f"for this certificate ({error.reason or error})", code=EXIT_SETUP)
    ca = ca_option or config.tls_ca_file
    if ca:
        ca = str(Path(ca).expanduser().absolute())
    elif any(_self_signed(certificate) for certificate in chain):
        # Its own root is in the file: the file is what clients trust (a public CA's chain
        # stops below the root, which the public CAs hold).
        ca = str(cert_path)
    return ServedTLS(str(cert_path), str(key_path), ca)


def _read_tls_file(path: Path, what: str) -> bytes:
    """The file's bytes; one line and exit 2 when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        fail(f"cannot read the TLS {what} {path}: {error.strerror or error}", code=EXIT_SETUP)


def _self_signed(certificate: x509.Certificate) -> bool:
    """Whether a certificate is its own issuer (and its signature says so)."""
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except Exception:  # noqa: BLE001 - any failure (bad signature, unsupported key): not self-signed
        return False
    return True
