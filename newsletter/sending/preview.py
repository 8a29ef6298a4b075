"""A campaign's email as a sample reader gets it: for preview-digest, preview-campaign, the
digest approval email and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import make_msgid
from pathlib import Path

from ..mail import ReaderParts, mail_domain, reader_greeting
from ..rendering import RenderedEmail, TemplateError, write_preview
from ..services import Services
from .messages import campaign_template

# What the preview fills in where each reader's own parts go.
SAMPLE_RECIPIENT = "ada@example.com"
SAMPLE_NAME = "Ada"
SAMPLE_UNSUBSCRIBE_PATH = "unsubscribe/sample-reader-preview"


@dataclass(frozen=True)
class EmailPreview:
    """A campaign's email as a sample reader would get it."""

    name: str  # the files' stem: "digest", "campaign"
    subject: str
    html: str
    text: str
    message: bytes  # the whole .eml, headers and both parts
    titles: tuple[str, ...] = ()  # the posts in it (a digest)

    def write(self, folder: str | Path) -> list[Path]:
        """Write ``NAME.html``, ``NAME.txt`` and ``NAME.eml`` into ``folder``."""
        return write_preview(folder, self.name, self.html, self.text, self.message)


def preview_campaign_email(
    services: Services, rendered: RenderedEmail, *, name: str, titles: tuple[str, ...] = ()
) -> EmailPreview:
    """Fill in a sample reader's parts of ``rendered``, the message built exactly as the
    sender builds each reader's copy. Touches no database; raises TemplateError."""
    reader = ReaderParts(
        recipient=SAMPLE_RECIPIENT,
        unsubscribe_url=services.public_url(SAMPLE_UNSUBSCRIBE_PATH),
        message_id=make_msgid(domain=mail_domain(str(services.config["MAIL_FROM"]))),
        greeting=reader_greeting(SAMPLE_NAME),
        name=SAMPLE_NAME,
    )
    data = campaign_template(services, rendered, services.clock()).personalise(reader)
    # The .html and .txt files are the reader's parts read back out of that very message.
    # With the default policy the parser makes EmailMessage objects.
    message = BytesParser(policy=email_policy.default).parsebytes(data)
    return EmailPreview(
        name=name,
        subject=rendered.subject,
        html=_part(message, "html", name),
        text=_part(message, "plain", name),
        message=data,
        titles=titles,
    )


def _part(message: EmailMessage, subtype: str, name: str) -> str:
    """One body part's text, with the platform's newlines rather than the wire's CRLF."""
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        raise TemplateError(f"the rendered {name} has no text/{subtype} part")
    return str(part.get_content()).replace("\r\n", "\n")
