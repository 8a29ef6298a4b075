"""Stand-ins for each reader's own parts in a campaign rendered once for everyone.

Templates render these strings where the reader's values go; the sender swaps them for each
reader's values in the serialised message. They use only letters, digits and underscores so
that premailer, HTML serialisation, quoted-printable and header folding leave them intact.
"""

from __future__ import annotations

UNSUBSCRIBE_URL = "__NEWSLETTER_UNSUBSCRIBE_URL__"
# "Hi Ada," or "Hello," — filled per reader, HTML-escaped in the HTML part.
GREETING = "__NEWSLETTER_GREETING__"
# Header values, filled per reader.
RECIPIENT = "__NEWSLETTER_RECIPIENT__"
MESSAGE_ID = "__NEWSLETTER_MESSAGE_ID__"
# The confirm link in a confirmation email, filled per message.
CONFIRM_URL = "__NEWSLETTER_CONFIRM_URL__"
# The Date header of a transactional email built once per process and sent many times.
DATE = "__NEWSLETTER_DATE__"
