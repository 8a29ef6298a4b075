"""The subscribe form for the author's own site: an HTML snippet for her site builder's embed
block. With script it posts JSON with fetch (cross-origin, CORS) and answers in place; without
script it is a plain form that posts to this service and comes back to the page."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

THANKS = "Thank you! Please check your inbox to confirm."
OOPS = "Oops! Something went wrong while submitting the form."
#: The fragment a plain (script-less) post returns to; CSS ``:target`` shows the thank-you.
THANKS_ANCHOR = "newsletter-thanks"

_STYLE = """<style>
  .nl-form{max-width:28rem;font:inherit}
  .nl-form label{display:block;margin:.6rem 0 .25rem;font-weight:600}
  .nl-form input[type=email],.nl-form input[type=text]{box-sizing:border-box;width:100%;
    padding:.6rem .7rem;font:inherit;border:1px solid #9a93a0;border-radius:6px}
  .nl-form button{margin-top:.9rem;padding:.65rem 1.4rem;font:inherit;font-weight:600;
    color:#fff;background:#7a5c8e;border:0;border-radius:999px;cursor:pointer}
  .nl-form button[disabled]{opacity:.6;cursor:progress}
  .nl-form .nl-hp{position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden}
  .nl-form .nl-consent{font-size:.85em;opacity:.85}
  .nl-form .nl-status:empty{display:none}
  .nl-form .nl-status{padding:.6rem .8rem;border-left:4px solid #7a5c8e;background:#f3eef6}
  .nl-form .nl-status.nl-error{border-color:#b3261e;background:#fbeceb}
  #newsletter-thanks{display:none}
  #newsletter-thanks:target{display:block}
</style>"""

# Plain ES2017, no dependencies; it only touches the form it belongs to.
_SCRIPT = """<script>
(function () {
  var form = document.getElementById("newsletter-form");
  if (!form || !window.fetch) { return; }
  var status = form.querySelector(".nl-status");
  var button = form.querySelector("button[type=submit]");
  // The page without its query: a query string may carry something personal.
  var page = window.location.origin + window.location.pathname;
  form.elements.source.value = page;
  form.elements.next.value = page + "#newsletter-thanks";
  function show(text, failed) {
    status.textContent = text;
    status.className = "nl-status" + (failed ? " nl-error" : "");
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var body = {};
    ["email", "name", "website", "source"].forEach(function (key) {
      if (form.elements[key]) { body[key] = form.elements[key].value; }
    });
    button.disabled = true;
    show("", false);
    fetch(form.action, {
      method: "POST", mode: "cors", credentials: "omit",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        if (response.ok && answer.ok) {
          form.reset();
          show(%(thanks)s, false);
        } else if (response.status === 400 || response.status === 429) {
          show(%(oops)s + (answer.message ? " " + answer.message : ""), true);
        } else {
          show(%(oops)s, true);
        }
      });
    }).catch(function () {
      show(%(oops)s, true);
    }).then(function () { button.disabled = false; });
  });
})();
</script>"""


def _js_string(text: str) -> str:
    """A JavaScript string literal that is also safe inside an HTML <script> element."""
    import json

    return json.dumps(text).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def consent_html(consent_text: str, privacy_policy_url: str | None) -> Markup:
    """The consent sentence, with "Privacy Policy" linked when there is a policy URL."""
    text = escape(consent_text)
    if not privacy_policy_url:
        return text
    link = Markup('<a href="{}" target="_blank" rel="noopener">Privacy Policy</a>').format(
        privacy_policy_url
    )
    if "Privacy Policy" in text:
        return Markup(text.replace("Privacy Policy", link, 1))
    return Markup("{} {}").format(text, link)


def render_snippet(
    config: dict[str, Any], page_url: str | None = None, *, with_script: bool = True
) -> str:
    """The HTML to paste into the blog: form, consent sentence, honeypot, and a few lines of
    script. ``page_url`` is where a script-less post returns to (default: the site's URL)."""
    action = f"{config['PUBLIC_URL']}/subscribe"
    page = (page_url or config["SITE_URL"]).split("#")[0]
    form = Markup("""<!-- {site} newsletter: paste this into an embed (HTML/code) block. -->
<form id="newsletter-form" class="nl-form" action="{action}" method="post">
  <label for="nl-email">Email address</label>
  <input id="nl-email" name="email" type="email" required autocomplete="email" maxlength="254"
         placeholder="you@example.com">
  <label for="nl-name">First name (optional)</label>
  <input id="nl-name" name="name" type="text" autocomplete="given-name" maxlength="200">
  <div class="nl-hp" aria-hidden="true">
    <label for="nl-website">Leave this empty</label>
    <input id="nl-website" name="website" type="text" tabindex="-1" autocomplete="off">
  </div>
  <input type="hidden" name="source" value="{page}">
  <input type="hidden" name="next" value="{next}">
  <button type="submit">Subscribe</button>
  <p class="nl-consent">{consent}</p>
  <p class="nl-status" role="status" aria-live="polite"></p>
  <p id="{anchor}" class="nl-status">{thanks}</p>
</form>""").format(
        site=config["SITE_NAME"].replace("--", "-"),
        action=action,
        page=page,
        next=f"{page}#{THANKS_ANCHOR}",
        consent=consent_html(config["CONSENT_TEXT"], config.get("PRIVACY_POLICY_URL")),
        anchor=THANKS_ANCHOR,
        thanks=THANKS,
    )
    parts = [_STYLE, str(form)]
    if with_script:
        parts.append(_SCRIPT % {"thanks": _js_string(THANKS), "oops": _js_string(OOPS)})
    return "\n".join(parts) + "\n"
