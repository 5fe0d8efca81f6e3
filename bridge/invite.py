"""How a mail invites replies (IMAP_URL set): Reply-To, a signed Message-ID that names its
outbox row, and a last line saying what answering does. With replies off, mails stay as
they were."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from bridge.mail.tokens import signed
from bridge.outbox import NewMail


def footer_line(renderer, target: Mapping[str, Any] | None) -> str:
    if not target:
        return ""
    return renderer.env.get_template("replies/invite.txt.j2").render(target=target).strip()


def _with_footer(renderer, text: str, html: str | None, line: str) -> tuple[str, str | None]:
    if not line:
        return text, html
    text = text.rstrip("\n") + "\n\n" + line + "\n"
    if html:
        para = renderer.env.get_template("replies/invite.html.j2").render(line=line)
        at = html.lower().rfind("</body>")
        html = html[:at] + para + html[at:] if at >= 0 else html + para
    return text, html


def invited(services, mail: NewMail, target: Mapping[str, Any] | None, footer: bool = True) -> NewMail:
    """`mail` as stored: with its reply target, and (replies on) ready to be answered. Its
    In-Reply-To is signed too when it is one of ours (a thread's root); a confirmation's,
    the replier's own id, is not (`footer=False`: the confirmation says what comes next)."""
    mail = dataclasses.replace(mail, reply_target=json.dumps(dict(target), ensure_ascii=False) if target else None)
    replies = services.settings.replies
    if replies is None:
        return mail
    secret = services.replies.secret()
    mail = dataclasses.replace(mail, message_id=signed(mail.message_id, secret),
                               headers={**mail.headers, "Reply-To": replies.reply_to})
    if not footer:
        return mail
    text, html = _with_footer(services.renderer, mail.text, mail.html, footer_line(services.renderer, target))
    return dataclasses.replace(mail, in_reply_to=signed(mail.in_reply_to, secret), text=text, html=html)
