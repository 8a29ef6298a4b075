"""Each reader's copy of a campaign (the message serialised once, the reader's parts) and the
SMTP connection check."""

from __future__ import annotations

from datetime import datetime

from .. import placeholders
from ..dkim import DkimSigner
from ..mail import MessageTemplate, ReaderParts, mail_domain, reader_greeting
from ..rendering import RenderedEmail
from ..services import Services
from ..smtp import Transport
from ..transactional import list_headers


def campaign_template(
    services: Services, rendered: RenderedEmail, date: datetime
) -> MessageTemplate:
    """A campaign's whole message, serialised once with a slot for each reader's parts:
    From, To, Subject, Date, Message-ID, Reply-To, List-Id, List-Unsubscribe(-Post), the text
    part and the HTML part; DKIM-signed per reader when configured."""
    config = services.config
    headers = {"Reply-To": config["REPLY_TO"]} if config.get("REPLY_TO") else {}
    headers.update(list_headers(config, placeholders.UNSUBSCRIBE_URL))
    return MessageTemplate.build(
        rendered,
        sender=config["MAIL_FROM"],
        sender_name=config.get("MAIL_FROM_NAME"),
        headers=headers,
        date=date,
        dkim=services.cached(  # keys parsed once
            DkimSigner.cache_key(config), lambda: DkimSigner.from_config(config)
        ),
    )


class ReaderFactory:
    """Each reader's own parts: address, name, unsubscribe link, a Message-ID fixed per
    (campaign, reader) so a rare second copy is recognisably the same message."""

    def __init__(self, services: Services, campaign_id: int, content_hash: str) -> None:
        self._tokens = services.tokens  # one token maker for the whole run
        self._unsubscribe = services.public_url("unsubscribe/")
        domain = mail_domain(str(services.config["MAIL_FROM"]))
        self._id_suffix = f"{(content_hash or 'x')[:12]}@{domain}"
        self._campaign_id = campaign_id

    def __call__(self, subscriber_id: int, email: str, name: str | None) -> ReaderParts:
        return ReaderParts(
            recipient=email,
            unsubscribe_url=self._unsubscribe + self._tokens.unsubscribe_token(subscriber_id),
            message_id=f"<c{self._campaign_id}.r{subscriber_id}.{self._id_suffix}>",
            greeting=reader_greeting(name),
            name=name,
        )


def connect_transport(transport: Transport) -> bool:
    """Open the connection now and say whether the server takes 8-bit bodies."""
    transport.connect()
    return transport.supports_8bit


def check_smtp(services: Services) -> None:
    """Connect and log in once; raises SmtpConfigError or SmtpUnavailableError before anything
    is planned or marked."""
    transport = services.open_transport()
    try:
        connect_transport(transport)
    finally:
        transport.close()
