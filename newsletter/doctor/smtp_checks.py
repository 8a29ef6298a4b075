"""SMTP checks, one stage at a time: connect, EHLO, TLS with a valid certificate, AUTH, and
whether the server takes the sender (then RSET). Nothing is sent unless ``send_test`` names an
address. The certificate is verified as the SMTP transport verifies it: the system's trust
store, or the file named by SSL_CERT_FILE."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..mail import mail_domain
from ..smtp import SmtpSettings
from . import Check, Status, ok, problem, warn

AREA = "smtp"
WHERE = "check NEWSLETTER_SMTP_HOST and NEWSLETTER_SMTP_PORT"


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def check_smtp(config: Mapping[str, Any], *, send_test: str | None = None) -> list[Check]:
    """The SMTP stages in order; the first PROBLEM ends the run (later stages need it)."""
    s = SmtpSettings.from_config(config)
    checks: list[Check] = []
    smtp = _connect(s, checks)
    if smtp is None:
        return checks
    try:
        if _secure(s, smtp, checks) and _login(s, smtp, checks):
            _sender(s, smtp, str(config["MAIL_FROM"]), checks)
            if send_test and checks[-1].status is not Status.PROBLEM:
                checks.append(_send_test(smtp, config, send_test))
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    return checks


def _tls_problem(s: SmtpSettings, err: Exception) -> Check:
    if isinstance(err, ssl.SSLCertVerificationError):
        return problem(
            AREA,
            "tls",
            f"the certificate of {s.host}:{s.port} is not valid: {err.verify_message}",
            "use the hostname the certificate names as NEWSLETTER_SMTP_HOST, or have "
            "the server's certificate renewed or its chain completed (SSL_CERT_FILE "
            "adds a private CA)",
        )
    return problem(
        AREA,
        "tls",
        f"TLS with {s.host}:{s.port} failed: {err}",
        "check NEWSLETTER_SMTP_SECURITY: ssl (implicit TLS) is usually port 465, starttls port 587",
    )


def _connect(s: SmtpSettings, checks: list[Check]) -> smtplib.SMTP | None:
    """Connect and greet (EHLO); for ``ssl`` the TLS handshake happens here too."""
    smtp: smtplib.SMTP
    try:
        smtp = s.open()
    except ConnectionRefusedError:
        checks.append(
            problem(
                AREA,
                "connect",
                f"nothing listens on {s.host}:{s.port}",
                f"{WHERE}, and that the mail server runs",
            )
        )
        return None
    except socket.gaierror as err:
        checks.append(
            problem(
                AREA,
                "connect",
                f"cannot resolve {s.host}: {err.strerror}",
                "check NEWSLETTER_SMTP_HOST",
            )
        )
        return None
    except (ssl.SSLError, ssl.CertificateError) as err:
        checks.append(ok(AREA, "connect", f"{s.host}:{s.port} accepts connections"))
        checks.append(_tls_problem(s, err))
        return None
    except TimeoutError:
        checks.append(
            problem(
                AREA,
                "connect",
                f"{s.host}:{s.port} did not answer within {s.timeout:g} s",
                f"{WHERE}; a firewall may block outgoing mail ports",
            )
        )
        return None
    except smtplib.SMTPConnectError as err:
        checks.append(
            problem(
                AREA,
                "connect",
                f"{s.host}:{s.port} refused the session: {err.smtp_code} {_text(err.smtp_error)}",
                f"{WHERE}, and ask the mail provider why",
            )
        )
        return None
    except (OSError, smtplib.SMTPException) as err:
        checks.append(problem(AREA, "connect", f"cannot reach {s.host}:{s.port}: {err}", WHERE))
        return None
    try:
        code, reply = smtp.ehlo()
    except (OSError, smtplib.SMTPException) as err:
        code, reply = 0, str(err).encode()
    if code != 250:
        checks.append(
            problem(
                AREA,
                "connect",
                f"{s.host}:{s.port} answered EHLO with {code} {_text(reply)}",
                WHERE,
            )
        )
        smtp.close()
        return None
    checks.append(
        ok(AREA, "connect", f"{s.host}:{s.port} answers EHLO ({_text(reply).splitlines()[0]})")
    )
    return smtp


def _secure(s: SmtpSettings, smtp: smtplib.SMTP, checks: list[Check]) -> bool:
    """TLS as configured; False after a PROBLEM."""
    if s.security == "ssl":
        checks.append(
            ok(AREA, "tls", f"implicit TLS ({_tls_version(smtp)}), certificate valid for {s.host}")
        )
        return True
    if s.security == "none":
        if _loopback(s.host):
            checks.append(ok(AREA, "tls", "no TLS to a relay on this machine"))
        elif smtp.has_extn("starttls"):
            checks.append(
                warn(
                    AREA,
                    "tls",
                    f"{s.host} offers STARTTLS but it is not used: "
                    "mail and password cross the network in the clear",
                    "set NEWSLETTER_SMTP_SECURITY=starttls",
                )
            )
        else:
            checks.append(
                warn(
                    AREA,
                    "tls",
                    f"no TLS to {s.host}: mail and password cross the network in the clear",
                    "use your provider's TLS port: NEWSLETTER_SMTP_SECURITY=starttls "
                    "with port 587, or ssl with port 465",
                )
            )
        return True
    if not smtp.has_extn("starttls"):
        checks.append(
            problem(
                AREA,
                "tls",
                f"{s.host}:{s.port} does not offer STARTTLS",
                "check NEWSLETTER_SMTP_PORT (587 for starttls) and NEWSLETTER_SMTP_SECURITY",
            )
        )
        return False
    try:
        smtp.starttls(context=ssl.create_default_context())
        smtp.ehlo()
    except (ssl.SSLError, ssl.CertificateError) as err:
        checks.append(_tls_problem(s, err))
        return False
    except (OSError, smtplib.SMTPException) as err:
        checks.append(
            problem(
                AREA,
                "tls",
                f"STARTTLS with {s.host}:{s.port} failed: {err}",
                "check NEWSLETTER_SMTP_SECURITY and NEWSLETTER_SMTP_PORT",
            )
        )
        return False
    checks.append(
        ok(AREA, "tls", f"STARTTLS ({_tls_version(smtp)}), certificate valid for {s.host}")
    )
    return True


def _tls_version(smtp: smtplib.SMTP) -> str:
    sock = smtp.sock
    return (sock.version() or "TLS") if isinstance(sock, ssl.SSLSocket) else "TLS"


def _login(s: SmtpSettings, smtp: smtplib.SMTP, checks: list[Check]) -> bool:
    """AUTH with the configured login; False after a PROBLEM."""
    if not s.username:
        checks.append(
            ok(AREA, "auth", "no login configured (the relay must accept this machine without one)")
        )
        return True
    if not smtp.has_extn("auth"):
        checks.append(
            problem(
                AREA,
                "auth",
                f"{s.host}:{s.port} offers no login (AUTH)",
                "check NEWSLETTER_SMTP_SECURITY (many servers offer AUTH only "
                "after STARTTLS) and NEWSLETTER_SMTP_USERNAME",
            )
        )
        return False
    try:
        smtp.login(s.username, s.password or "")
    except smtplib.SMTPAuthenticationError as err:
        checks.append(
            problem(
                AREA,
                "auth",
                f"login as {s.username} refused: {err.smtp_code} {_text(err.smtp_error)}",
                "check NEWSLETTER_SMTP_USERNAME and NEWSLETTER_SMTP_PASSWORD",
            )
        )
        return False
    except (OSError, smtplib.SMTPException) as err:
        checks.append(
            problem(
                AREA,
                "auth",
                f"login as {s.username} failed: {err}",
                "check NEWSLETTER_SMTP_USERNAME and NEWSLETTER_SMTP_PASSWORD",
            )
        )
        return False
    checks.append(ok(AREA, "auth", f"logged in as {s.username}"))
    return True


def _sender(s: SmtpSettings, smtp: smtplib.SMTP, sender: str, checks: list[Check]) -> None:
    """MAIL FROM for the configured sender, then RSET: no message is started."""
    try:
        code, reply = smtp.mail(sender)
        smtp.rset()
    except (OSError, smtplib.SMTPException) as err:
        code, reply = 0, str(err).encode()
    if code == 250:
        checks.append(ok(AREA, "sender", f"the server accepts MAIL FROM:<{sender}>"))
    else:
        checks.append(
            problem(
                AREA,
                "sender",
                f"the server refused MAIL FROM:<{sender}>: {code} {_text(reply)}",
                "set NEWSLETTER_MAIL_FROM to an address this login may send as "
                "(your provider lists the verified senders)",
            )
        )


def _send_test(smtp: smtplib.SMTP, config: Mapping[str, Any], recipient: str) -> Check:
    """Send one short message, signed as campaigns are, to ``recipient``."""
    from email.message import EmailMessage
    from email.policy import SMTP as SMTP_POLICY
    from email.utils import format_datetime, make_msgid

    from ..dkim import DkimError, DkimSigner
    from ..mail import format_address

    sender = str(config["MAIL_FROM"])
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = format_address(sender, config.get("MAIL_FROM_NAME"))
    message["To"] = recipient
    message["Subject"] = f"newsletter doctor: test message from {config['SITE_NAME']}"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=mail_domain(sender))
    message.set_content(
        "This test message was sent by `newsletter doctor --send-test`.\n"
        "Look at its headers for spf=pass, dkim=pass and dmarc=pass.\n"
    )
    data = message.as_bytes()
    try:
        signer = DkimSigner.from_config(config)
        if signer is not None:
            data = signer.sign(data)
    except DkimError as err:
        return problem(
            AREA,
            "send-test",
            f"could not sign the test message: {err}",
            "fix NEWSLETTER_DKIM_PRIVATE_KEY",
        )
    try:
        refused = smtp.sendmail(sender, [recipient], data)
    except smtplib.SMTPRecipientsRefused as err:
        code, reply = err.recipients[recipient]
        return problem(
            AREA,
            "send-test",
            f"the server refused {recipient}: {code} {_text(reply)}",
            "check the address",
        )
    except (OSError, smtplib.SMTPException) as err:
        return problem(
            AREA,
            "send-test",
            f"sending to {recipient} failed: {err}",
            "read the server's reply above; your provider's logs say more",
        )
    if refused:
        return problem(
            AREA, "send-test", f"the server refused {recipient}: {refused}", "check the address"
        )
    return ok(
        AREA,
        "send-test",
        f"sent a test message to {recipient}; open it and check its Authentication-Results header",
    )


def _text(reply: bytes | str | None) -> str:
    if reply is None:
        return ""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
