"""Bounces and complaints: VERP envelope senders, reading bounce mailboxes, classifying what
arrives (RFC 3464 delivery status notifications, real-world bounce formats through flufl.bounce,
RFC 5965 feedback reports, auto-replies), provider webhooks, and the rules that keep the list
clean. Domain code: it takes a session, a clock and the settings, never a request."""
