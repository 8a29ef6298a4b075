"""A private Postfix (Debian's ``postfix``) for the end-to-end bounce test: its own
config_directory, queue and data directories in a temporary directory, listening on 127.0.0.1
at a free port, relaying everything to a test SMTP sink, and delivering mail for the VERP
domain (``bounces+TOKEN@blog.example.com``, recipient_delimiter ``+``) to a Maildir through
virtual(8). It logs to a file in its directory (``maillog``).

Without the binary or root the test is skipped with a reason; in CI (``CI`` set) it fails:
CI must run it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def require_postfix() -> None:
    """Skip (or, in CI, fail) when Postfix cannot run here."""
    problem = None
    if not os.path.exists(POSTFIX):
        problem = "Postfix is not installed: apt-get install postfix (.ci/run does)"
    elif os.geteuid() != 0:
        problem = "the Postfix test starts a private Postfix, which needs root"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Postfix end-to-end test: {problem}")
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Postfix:
    """One running Postfix; ``stop()`` ends it and removes its directory."""

    def __init__(self, relay_port: int, domain: str, mailbox_local_part: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="newsletter-postfix-"))
        self.dir.chmod(0o755)  # Postfix's daemons run as the postfix user
        account = pwd.getpwnam("postfix")
        etc, queue, data, vmail = (self.dir / n for n in ("etc", "queue", "data", "vmail"))
        for path in (etc, queue, data, vmail):
            path.mkdir()
        os.chown(data, account.pw_uid, account.pw_gid)
        os.chown(vmail, account.pw_uid, account.pw_gid)
        self.maildir = vmail / mailbox_local_part
        self.port = _free_port()
        self.etc = etc
        (etc / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        (etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mail.{domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{relay_port}
smtp_host_lookup = native
smtp_dns_support_level = disabled
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = inline:{{ {mailbox_local_part}@{domain}={mailbox_local_part}/ }}
virtual_uid_maps = static:{account.pw_uid}
virtual_gid_maps = static:{account.pw_gid}
recipient_delimiter = +
maillog_file_prefixes = {self.dir}
maillog_file = {self.dir}/maillog
smtputf8_enable = no
biff = no
""")
        started = subprocess.run(
            [POSTFIX, "-c", str(etc), "start"], capture_output=True, text=True, timeout=60
        )
        if started.returncode != 0:
            raise RuntimeError(
                f"postfix start failed ({started.returncode}): "
                f"{started.stdout}{started.stderr}{self.log()}"
            )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Postfix did not listen:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        path = self.dir / "maillog"
        return path.read_text() if path.exists() else ""

    def wait_for_delivery(self, count: int, timeout: float = 60.0) -> list[Path]:
        """The files in the Maildir's ``new``, once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        new = self.maildir / "new"
        while True:
            found = sorted(new.iterdir()) if new.is_dir() else []
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no DSN delivered to {new}:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
