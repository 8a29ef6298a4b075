"""A private Dovecot (Debian's dovecot-imapd and dovecot-pop3d) for the mailbox tests: its own
configuration, state and Maildirs in a temporary directory, IMAPS, IMAP with STARTTLS and POP3S
on 127.0.0.1, a certificate from a test CA (trustme), one user with a password.

It needs root (the master binds, then runs mail processes as the ``dovecot`` user). Without the
binary or root the tests are skipped with a reason saying how to install it; in CI (``CI`` set,
as ``.ci/run`` does, which also installs the packages) they fail instead: CI must run them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "bounces", "s3cret pass"


def require_dovecot() -> None:
    """Skip (or, in CI, fail) when Dovecot cannot run here."""
    problem = None
    if not os.path.exists(DOVECOT):
        problem = (
            "Dovecot is not installed: apt-get install dovecot-imapd dovecot-pop3d (.ci/run does)"
        )
    elif os.geteuid() != 0:
        problem = "the Dovecot tests start a private Dovecot, which needs root"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the IMAP/POP3 tests: {problem}")
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dovecot:
    """One running Dovecot; ``stop()`` ends it and removes its directory."""

    def __init__(self) -> None:
        import trustme

        self.dir = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
        # The mail processes run as the dovecot user: it must reach the Maildir.
        self.dir.chmod(0o755)
        account = pwd.getpwnam("dovecot")
        mail = self.dir / "mail"
        mail.mkdir()
        os.chown(mail, account.pw_uid, account.pw_gid)
        self.mail_root = mail / USER
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
        self.ssl_context = ssl.create_default_context()
        ca.configure_trust(self.ssl_context)
        (self.dir / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        self.imap_port, self.imaps_port, self.pop3s_port = (_free_port() for _ in range(3))
        (self.dir / "dovecot.conf").write_text(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.dir}/cert.pem
ssl_key = <{self.dir}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain
first_valid_uid = {account.pw_uid}
mail_location = maildir:{mail}/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.dir}/users
}}
userdb {{
  driver = static
  args = uid={account.pw_uid} gid={account.pw_gid} home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
""")
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + 30
        for port in (self.imap_port, self.imaps_port, self.pop3s_port):
            while True:
                if self.process.poll() is not None:
                    output = self.process.stdout.read().decode() if self.process.stdout else ""
                    raise RuntimeError(f"Dovecot exited: {output}{self.log()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"Dovecot did not listen on {port}:\n{self.log()}"
                        ) from None
                    time.sleep(0.05)

    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text() if path.exists() else ""

    def url(self, scheme: str, folder: str = "INBOX") -> str:
        from urllib.parse import quote

        port = {"imaps": self.imaps_port, "imap": self.imap_port, "pop3s": self.pop3s_port}[scheme]
        path = "" if scheme == "pop3s" else f"/{quote(folder)}"
        return f"{scheme}://{USER}:{quote(PASSWORD)}@127.0.0.1:{port}{path}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)
