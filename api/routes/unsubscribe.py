"""One-click unsubscribe (RFC 8058, SPEC §10): no API key; the signed token names the contact.

POST unsubscribes (mail clients' one-click button, and the confirmation page's form); GET only
shows that page, because link scanners and prefetchers open every link in an email."""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api.deps import in_db, state
from api.errors import error_responses
from core import unsubscribe

router = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto; padding: 0 1rem;
       line-height: 1.5; color: #1a1a1a; }}
button {{ font-size: 1rem; padding: .6rem 1.2rem; border: 0; border-radius: .3rem;
         background: #1f5fbf; color: #fff; cursor: pointer; }}
button:focus-visible {{ outline: 3px solid #f5a623; outline-offset: 2px; }}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
{content}
</main>
</body>
</html>
"""


def _masked(address: str | None) -> str:
    """a***@example.com: enough to recognise one's address, not to read someone else's."""
    if not address or "@" not in address:
        return "your address"
    local, domain = address.rsplit("@", 1)
    return f"{local[:1]}***@{domain}"


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept


_PAGE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "The confirmation page.", "content": {"text/html": {"schema": {"type": "string"}}}}
}
_DONE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Unsubscribed from email (an HTML page when the client accepts text/html).",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"unsubscribed": {"type": "boolean"}, "channel": {"type": "string"}},
                    "required": ["unsubscribed", "channel"],
                }
            },
            "text/html": {"schema": {"type": "string"}},
        },
    }
}


@router.get("/{token}", responses={**_PAGE_DOC, **error_responses(404)})
async def confirm_page(request: Request, token: str) -> Response:
    """A small page with one button that POSTs the unsubscribe (a GET changes nothing)."""
    settings = state(request).settings
    contact = await in_db(request, lambda s: unsubscribe.find_contact(s, settings, token), write=False)
    content = (
        f"<p>Stop receiving campaign emails at <strong>{escape(_masked(contact.email))}</strong>?</p>\n"
        '<form method="post" action="">\n'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">\n'
        '<button type="submit">Unsubscribe</button>\n'
        "</form>\n"
        "<p>You will still receive messages on other channels you signed up for.</p>"
    )
    return HTMLResponse(PAGE.format(title="Unsubscribe", content=content))


@router.post("/{token}", responses={**_DONE_DOC, **error_responses(404)})
async def unsubscribe_contact(request: Request, token: str) -> Response:
    """Opt the contact out of email: 200 (again on a second click); a bad token is 404."""
    settings = state(request).settings
    await in_db(request, lambda s: unsubscribe.unsubscribe(s, settings, token))
    if _wants_html(request):
        content = "<p>You have been unsubscribed. You will not receive campaign emails any more.</p>"
        return HTMLResponse(PAGE.format(title="You are unsubscribed", content=content))
    return JSONResponse({"unsubscribed": True, "channel": "email"})
