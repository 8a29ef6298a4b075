"""The embeddable form: what `newsletter embed-snippet` prints, and the service's side of it
(CORS for the allowed origins only, the plain form's way back to the page). The real browser
runs it in tests/test_browser.py."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from newsletter.embed import OOPS, THANKS, render_snippet
from tests.conftest import BLOG_ORIGIN, PUBLIC_URL

PAGE = f"{BLOG_ORIGIN}/join"


def test_the_snippet_has_the_form_consent_honeypot_and_script(app: Flask) -> None:
    snippet = render_snippet(app.config, PAGE)
    assert f'action="{PUBLIC_URL}/subscribe" method="post"' in snippet
    assert 'name="email" type="email" required' in snippet
    assert 'name="website"' in snippet and 'tabindex="-1"' in snippet
    assert f'name="source" value="{PAGE}"' in snippet
    assert f'name="next" value="{PAGE}#newsletter-thanks"' in snippet
    assert (
        f'By subscribing you agree to our <a href="{BLOG_ORIGIN}/privacy" target="_blank" '
        'rel="noopener">Privacy Policy</a>.'
    ) in snippet
    assert f'<p id="newsletter-thanks" class="nl-status">{THANKS}</p>' in snippet
    script = snippet[snippet.index("<script>") :]
    assert f'"{THANKS}"' in script and f'"{OOPS}"' in script
    assert '"Accept": "application/json"' in script and "JSON.stringify" in script
    assert 'credentials: "omit"' in script  # no cookies go to the service
    assert "<script>" not in render_snippet(app.config, PAGE, with_script=False)


def test_the_snippet_escapes_what_the_settings_say(app: Flask) -> None:
    config: dict[str, Any] = {
        **app.config,
        "SITE_NAME": "Calm -- Corner",
        "CONSENT_TEXT": "Yes <b>please</b> & thanks",
        "PRIVACY_POLICY_URL": 'https://blog.example.com/p?a=1&b="2"',
    }
    snippet = render_snippet(config, PAGE)
    assert "Yes &lt;b&gt;please&lt;/b&gt; &amp; thanks" in snippet
    assert 'href="https://blog.example.com/p?a=1&amp;b=&#34;2&#34;"' in snippet
    assert "<!-- Calm - Corner newsletter" in snippet


def test_embed_snippet_command(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["embed-snippet", "--page-url", PAGE])
    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.stdout.startswith("<style>") and f'value="{PAGE}"' in result.stdout

    elsewhere = runner.invoke(args=["embed-snippet", "--page-url", "https://other.example/p"])
    assert elsewhere.exit_code == 0
    assert "https://other.example is not in NEWSLETTER_ALLOWED_ORIGINS" in elsewhere.stderr
    bad = runner.invoke(args=["embed-snippet", "--page-url", "blog.example.com/join"])
    assert bad.exit_code == 2 and "full http(s) URL" in bad.output

    default = runner.invoke(args=["embed-snippet", "--no-script"])
    assert f'name="source" value="{BLOG_ORIGIN}"' in default.stdout
    assert "<script>" not in default.stdout


def test_cors_answers_only_the_allowed_origins(client: FlaskClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    allowed = client.options("/subscribe", headers={"Origin": BLOG_ORIGIN, **preflight})
    assert allowed.headers["Access-Control-Allow-Origin"] == BLOG_ORIGIN
    assert "Content-Type" in allowed.headers["Access-Control-Allow-Headers"]
    other = client.options("/subscribe", headers={"Origin": "https://evil.example", **preflight})
    assert "Access-Control-Allow-Origin" not in other.headers

    posted = client.post(
        "/subscribe",
        json={"email": "a@example.com", "source": PAGE},
        headers={"Origin": BLOG_ORIGIN, "Accept": "application/json"},
    )
    assert posted.status_code == 202 and posted.json is not None and posted.json["ok"] is True
    assert posted.headers["Access-Control-Allow-Origin"] == BLOG_ORIGIN


def test_the_plain_form_comes_back_to_the_page_on_an_allowed_origin_only(
    client: FlaskClient,
) -> None:
    back = client.post(
        "/subscribe",
        data={"email": "b@example.com", "source": PAGE, "next": f"{PAGE}#newsletter-thanks"},
    )
    assert back.status_code == 303
    assert back.headers["Location"] == f"{PAGE}#newsletter-thanks"
    away = client.post(
        "/subscribe", data={"email": "c@example.com", "next": "https://evil.example/phish"}
    )
    assert away.status_code == 303
    assert re.search(r"/subscribe/thanks$", away.headers["Location"])
