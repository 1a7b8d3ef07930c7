"""TLS for a client of a Dask cluster: the ``--tls-*`` files checked and loaded into a
``distributed.security.Security``, and dask's own TLS settings checked before connecting.
Every problem is a :class:`~rifscale.errors.ConfigError` that names the file."""

from __future__ import annotations

import os

from .errors import ConfigError


#: dask's settings of a TLS client, and the environment variables that set them
TLS_CONFIG = {
    "distributed.comm.tls.ca-file": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "distributed.comm.tls.client.cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "distributed.comm.tls.client.key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
}


def _check_pem_file(path, what: str) -> None:
    """A clear ConfigError when a certificate, key or CA file is missing or unreadable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"{what}: the file {path!r} does not exist.")
    if not os.path.isfile(path):
        raise ConfigError(f"{what}: {path!r} is not a file.")
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as exc:
        raise ConfigError(f"{what}: the file {path!r} cannot be read ({exc.strerror or exc}).") from None
    if b"-----BEGIN" not in head:
        raise ConfigError(f"{what}: the file {path!r} is not in PEM format (no '-----BEGIN' line).")


def _check_ssl_context(security, files: dict) -> None:
    """Load the certificates as a TLS client would: a key that does not match its
    certificate, or an unparsable PEM file, is an input error, not a connection error."""
    import ssl

    try:
        security.get_connection_args("client")
    except (ssl.SSLError, OSError, ValueError) as exc:
        named = ", ".join(f"{k} {v!r}" for k, v in files.items() if v)
        raise ConfigError(
            f"The TLS files ({named}) cannot be loaded: {exc}. The CA file and the certificate must be PEM, "
            "and the key must be the certificate's (or be appended to the certificate file)."
        ) from None


def tls_security(ca_file=None, cert=None, key=None):
    """The ``distributed.security.Security`` of a TLS client (encryption required) for the
    ``--tls-ca-file``/``--tls-cert``/``--tls-key`` files, or None when none is given, in
    which case dask's own settings apply (``distributed.comm.tls.ca-file``,
    ``distributed.comm.tls.client.cert`` and ``.key``; see :data:`TLS_CONFIG`).

    Missing or unreadable files, and a key that does not match its certificate, raise
    :class:`~rifscale.errors.ConfigError` naming the file."""
    files = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    if not any(files.values()):
        return None
    missing = [flag for flag in ("--tls-ca-file", "--tls-cert") if not files[flag]]
    if missing:
        raise ConfigError(
            f"TLS needs --tls-ca-file (the cluster's CA) and --tls-cert (this client's certificate, with "
            f"--tls-key unless the key is in the same file); {' and '.join(missing)} not given."
        )
    for flag, path in files.items():
        if path:
            _check_pem_file(path, flag)
    from distributed.security import Security

    security = Security(require_encryption=True, tls_ca_file=os.fspath(ca_file), tls_client_cert=os.fspath(cert),
                        tls_client_key=os.fspath(key) if key else None)
    _check_ssl_context(security, files)
    return security


def config_security(address: str):
    """Check the TLS files named in dask's config (not given as options): readable, and
    present at all when the scheduler's address is ``tls://``."""
    import dask

    given = {name: dask.config.get(name, None) for name in TLS_CONFIG}
    for name, value in given.items():
        if value and "\n" not in str(value):  # a path (dask also takes the PEM text itself)
            _check_pem_file(value, f"dask config {name} (environment {TLS_CONFIG[name]})")
    if address.startswith("tls://"):
        if not (given["distributed.comm.tls.ca-file"] and given["distributed.comm.tls.client.cert"]):
            raise ConfigError(
                f"The scheduler at {address!r} accepts TLS clients only, and no client certificate was given: "
                "pass --tls-ca-file CA.pem --tls-cert CERT.pem --tls-key KEY.pem (files signed by the cluster's "
                "CA), or set dask's distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and "
                ".client.key (environment DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ..._CLIENT__CERT, ..._CLIENT__KEY)."
            )
        from distributed.security import Security

        _check_ssl_context(Security(), {name: v for name, v in given.items()})
