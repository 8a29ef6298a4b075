"""Content rules in one place: sanitising post HTML, HTML to text, Markdown bodies, embeds."""
