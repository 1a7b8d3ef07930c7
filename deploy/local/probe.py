"""Helper of cluster.sh: ask the scheduler named by a dask scheduler file.

    python probe.py alive SCHEDULER_FILE [--tls-dir TLS] [--timeout S]
        exit 0 and print address=, id=, dashboard= when the scheduler at the file's address
        answers and is the scheduler the file names (same id); exit 1 otherwise.
    python probe.py wait SCHEDULER_FILE --names a,b [--pids 1,2] [--tls-dir TLS] [--timeout S]
        exit 0 once every named worker has joined; exit 1 when one of --pids exits or the
        timeout passes, naming the workers still missing.

With --tls-dir the probe connects as a TLS client with TLS/cert.pem and TLS/key.pem.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def _security(tls_dir: str | None):
    if not tls_dir:
        return None
    from distributed.security import Security

    return Security(require_encryption=True, tls_ca_file=os.path.join(tls_dir, "ca.pem"),
                    tls_client_cert=os.path.join(tls_dir, "cert.pem"),
                    tls_client_key=os.path.join(tls_dir, "key.pem"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="probe.py")
    ap.add_argument("what", choices=("alive", "wait"))
    ap.add_argument("scheduler_file")
    ap.add_argument("--tls-dir")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--names", default="")
    ap.add_argument("--pids", default="")
    args = ap.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # our own message says what failed
    try:
        with open(args.scheduler_file) as fh:
            info = json.load(fh)
        address, sid = info["address"], info["id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{args.scheduler_file} is not a readable dask scheduler file ({exc})", file=sys.stderr)
        return 1
    from distributed import Client

    try:
        client = Client(address, timeout=args.timeout, security=_security(args.tls_dir), set_as_default=False)
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "does not answer"
        print(f"no scheduler answers at {address} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    try:
        ident = client.scheduler_info()
        if ident.get("id") != sid:
            print(f"the scheduler at {address} is not the one {args.scheduler_file} names "
                  f"(id {ident.get('id')}, not {sid})", file=sys.stderr)
            return 1
        if args.what == "alive":
            print(f"address={address}\nid={sid}\ndashboard={ident.get('services', {}).get('dashboard', '')}")
            return 0
        names = {n for n in args.names.split(",") if n}
        pids = [int(p) for p in args.pids.split(",") if p]
        deadline = time.monotonic() + args.timeout
        while True:
            joined = {str(w.get("name")) for w in client.scheduler_info()["workers"].values()}
            missing = sorted(names - joined)
            if not missing:
                return 0
            dead = [p for p in pids if not _alive(p)]
            if dead:
                print(f"process(es) {', '.join(map(str, dead))} exited before every worker joined "
                      f"(missing: {', '.join(missing)})", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"worker(s) {', '.join(missing)} did not join the scheduler at {address} within "
                      f"{args.timeout:g} s", file=sys.stderr)
                return 1
            time.sleep(0.25)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
