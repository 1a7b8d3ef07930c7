"""TLS: a CA and certificates made at test time, a TLS scheduler and worker started by
deploy/local/cluster.sh --tls-dir on 127.0.0.1. A client with certificates signed by
the CA runs a job (flags, or dask's config) that matches the dense reference; a client
without them, with a certificate from another CA, or speaking plain TCP is refused, and
leaves no output behind. Missing or unreadable TLS files are input errors (exit 2)."""

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import dask
import pytest

import rifscale
from rifscale.cli import main
from rifscale.tls import TLS_CONFIG
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent
SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local" / "cluster.sh"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
       "STOP_GRACE": "10"}


# ------------------------------------------------------------------ certificates

def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject, issuer, public_key):
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def make_ca(cn: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    cert = (_builder(_name(cn), _name(cn), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_cert(ca, cn: str, *, server: bool):
    """A certificate signed by ``ca``: client authentication, and server authentication
    too for the scheduler and workers (which also connect to each other)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca_cert = ca
    key = _key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    cert = (_builder(_name(cn), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def write_pems(folder: Path, ca_cert, pair) -> Path:
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True)
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(pair[1].public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(pair[0].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "key.pem").chmod(0o600)
    return folder


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """cluster/ (scheduler and workers), client/ (a rifscale client) signed by one CA;
    rogue/: the same CA file, but a client certificate signed by another CA."""
    pytest.importorskip("cryptography", reason="the dev extra installs cryptography to make test certificates")
    tmp = tmp_path_factory.mktemp("tls")
    ca, rogue_ca = make_ca("rifscale test CA"), make_ca("another CA")
    return {
        "cluster": write_pems(tmp / "cluster", ca[1], make_cert(ca, "dask cluster", server=True)),
        "client": write_pems(tmp / "client", ca[1], make_cert(ca, "rifscale client", server=False)),
        "rogue": write_pems(tmp / "rogue", ca[1], make_cert(rogue_ca, "rogue client", server=False)),
    }


def tls_flags(folder: Path) -> list[str]:
    return ["--tls-ca-file", str(folder / "ca.pem"), "--tls-cert", str(folder / "cert.pem"),
            "--tls-key", str(folder / "key.pem")]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, certs):
    d = tmp_path_factory.mktemp("tls-cluster")
    done = subprocess.run(["bash", str(SCRIPT), "start", str(d), "--workers", "1", "--tls-dir", str(certs["cluster"])],
                          env=ENV, capture_output=True, text=True, timeout=180)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        address = json.loads((d / "scheduler.json").read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        yield {"address": address, "scheduler_file": d / "scheduler.json"}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(d)], env=ENV, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pr = make_problem(160, 12, n_test=50, seed=41)
    path = tmp_path_factory.mktemp("tls-corpus") / "c.zarr"
    rifscale.ingest(path, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=40)
    return path, pr, Reference(pr.X, pr.y, lam=1.0)


def _matches_reference(out: Path, pr, ref) -> None:
    run = rifscale.open_run(out)
    assert rel_err(run.model.theta, ref.theta) <= 1e-8
    assert rel_err(run.array("scores/leverage")[:], ref.h) <= 1e-8
    s_if, s_rif = ref.scores("test_loss", pr.X_test, pr.y_test)
    assert rel_err(run.array("scores/if_test_loss")[:], s_if) <= 1e-8
    assert rel_err(run.array("scores/rif_test_loss")[:], s_rif) <= 1e-8


def _nothing_written(out: Path) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


# ------------------------------------------------------------------ tests

def test_client_with_certificates_runs_and_matches_the_reference(tls_cluster, certs, corpus, tmp_path):
    path, pr, ref = corpus
    for target in (str(tls_cluster["scheduler_file"]), tls_cluster["address"]):
        out = tmp_path / f"run-{len(target)}"
        assert main(["-q", "run", str(path), "--out", str(out), "--test-subset", "all", "--scheduler", target,
                     *tls_flags(certs["client"])]) == 0
        _matches_reference(out, pr, ref)


def test_dask_tls_config_is_honoured(tls_cluster, certs, corpus, tmp_path):
    """No TLS flags: dask's distributed.comm.tls.* settings, here as the environment
    variables TLS_CONFIG names (read the way dask reads its environment)."""
    path, pr, ref = corpus
    client = certs["client"]
    env = dict(zip(TLS_CONFIG.values(), (str(client / "ca.pem"), str(client / "cert.pem"), str(client / "key.pem"))))
    collected = dask.config.collect(paths=[], env=env)
    settings = {name: dask.config.get(name, config=collected) for name in TLS_CONFIG}
    assert settings == dict(zip(TLS_CONFIG, env.values()))
    out = tmp_path / "run"
    with dask.config.set(settings):
        assert main(["-q", "run", str(path), "--out", str(out), "--test-subset", "all",
                     "--scheduler", tls_cluster["address"]]) == 0
    _matches_reference(out, pr, ref)


def test_clients_without_the_clusters_certificates_are_refused(tls_cluster, certs, corpus, tmp_path, capsys):
    path, _, _ = corpus
    base = ["-q", "run", str(path), "--test-subset", "all", "--timeout", "5"]
    # no credentials at all: refused before connecting, with what to pass
    out = tmp_path / "none"
    assert main([*base, "--out", str(out), "--scheduler", tls_cluster["address"]]) == 2
    err = capsys.readouterr().err
    assert "accepts TLS clients only" in err and "--tls-cert" in err and "Traceback" not in err
    _nothing_written(out)
    # a certificate signed by another CA: the scheduler ends the handshake
    out = tmp_path / "rogue"
    assert main([*base, "--out", str(out), "--scheduler", tls_cluster["address"], *tls_flags(certs["rogue"])]) == 2
    err = capsys.readouterr().err
    assert "Cannot reach the dask scheduler" in err and "TLS" in err and "Traceback" not in err
    _nothing_written(out)
    # plain TCP to the TLS port
    out = tmp_path / "plain"
    assert main([*base, "--out", str(out), "--scheduler", tls_cluster["address"].replace("tls://", "tcp://")]) == 2
    assert "Cannot reach the dask scheduler" in capsys.readouterr().err
    _nothing_written(out)


def _first_read(address: str, ctx: ssl.SSLContext) -> str:
    """'accepted' when the scheduler completes the TLS handshake and waits for a message,
    'refused' when it ends the connection (a TLS alert, or EOF)."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            with ctx.wrap_socket(sock) as tls:
                tls.settimeout(3)
                data = tls.recv(1)  # TLS 1.3: the server's verdict on the client comes with the first read
        except TimeoutError:
            return "accepted"
        except (ssl.SSLError, ConnectionError):
            return "refused"
    return "refused" if data == b"" else "accepted"


def test_the_scheduler_requires_a_client_certificate(tls_cluster, certs):
    """At the TLS level, whatever the client library: a client that trusts the CA but
    presents no certificate is refused; with the client certificate it is let in."""
    ctx = ssl.create_default_context(cafile=str(certs["client"] / "ca.pem"))
    ctx.check_hostname = False
    assert _first_read(tls_cluster["address"], ctx) == "refused"
    ctx.load_cert_chain(certs["client"] / "cert.pem", certs["client"] / "key.pem")
    assert _first_read(tls_cluster["address"], ctx) == "accepted"


def test_missing_or_bad_tls_files_are_input_errors(certs, corpus, tmp_path, capsys):
    path, _, _ = corpus
    client = certs["client"]
    base = ["-q", "run", str(path), "--out", str(tmp_path / "run"), "--scheduler", "tls://127.0.0.1:1"]
    missing = tmp_path / "nope.pem"
    cases = [
        (["--tls-ca-file", str(client / "ca.pem"), "--tls-cert", str(missing)], str(missing)),
        (["--tls-ca-file", str(missing), "--tls-cert", str(client / "cert.pem"), "--tls-key", str(client / "key.pem")],
         str(missing)),
        (["--tls-cert", str(client / "cert.pem")], "--tls-ca-file"),
    ]
    not_pem = tmp_path / "garbage.pem"
    not_pem.write_text("not a certificate\n")
    cases.append((["--tls-ca-file", str(client / "ca.pem"), "--tls-cert", str(not_pem)], str(not_pem)))
    # a key that is not the certificate's
    cases.append((["--tls-ca-file", str(client / "ca.pem"), "--tls-cert", str(client / "cert.pem"),
                   "--tls-key", str(certs["rogue"] / "key.pem")], "cannot be loaded"))
    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable.pem"
        unreadable.write_bytes((client / "key.pem").read_bytes())
        unreadable.chmod(0)
        cases.append((["--tls-ca-file", str(client / "ca.pem"), "--tls-cert", str(client / "cert.pem"),
                       "--tls-key", str(unreadable)], "cannot be read"))
    for flags, named in cases:
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err
    # TLS flags with a plain tcp:// address
    assert main([*base[:-1], "tcp://127.0.0.1:1", *tls_flags(client)]) == 2
    assert "not a tls:// address" in capsys.readouterr().err
    # a file named by dask's config (DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT)
    with dask.config.set({"distributed.comm.tls.ca-file": str(client / "ca.pem"),
                          "distributed.comm.tls.client.cert": str(missing)}):
        assert main(base) == 2
    err = capsys.readouterr().err
    assert "distributed.comm.tls.client.cert" in err and "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT" in err
    assert str(missing) in err
    _nothing_written(tmp_path / "run")
