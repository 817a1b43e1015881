"""An SMTP sink for billd-email's tests, run by aiosmtpd:

    PYTHONPATH=crates/billd-email/tests python3 -m aiosmtpd -n \
        -l 127.0.0.1:PORT -c smtp_sink.Sink DIR

Each accepted message is written to DIR as NAME.eml (the raw bytes) and
NAME.json (envelope, headers and decoded MIME parts, so the Rust test needs
no MIME parser). Both are written to a temporary name first and renamed, so
a reader never sees half a message.

Recipients whose local part starts with "reject" get a permanent 550,
"defer" a transient 451, "authreq" a 530 (authentication required): the
tests check how billd classifies each.
"""

import json
import os
import time
from email import message_from_bytes, policy


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0
        os.makedirs(directory, exist_ok=True)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("smtp_sink.Sink takes one argument: the output directory")
        return cls(args[0])

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 mailbox unavailable"
        if local.startswith("authreq"):
            return "530 5.7.0 Authentication required"
        if local.startswith("defer"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        parsed = message_from_bytes(raw, policy=policy.default)
        parts = []
        for part in parsed.walk():
            if part.is_multipart():
                continue
            parts.append(
                {"content_type": part.get_content_type(), "content": part.get_content()}
            )
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "headers": {k.lower(): str(v) for k, v in parsed.items()},
            "content_type": parsed.get_content_type(),
            # Set once the session runs over TLS (STARTTLS or implicit).
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "parts": parts,
        }
        self.count += 1
        name = "%020d-%04d" % (time.time_ns(), self.count)
        for suffix, data in ((".eml", raw), (".json", json.dumps(record).encode("utf-8"))):
            tmp = os.path.join(self.directory, "." + name + suffix + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(self.directory, name + suffix))
        return "250 Message accepted for delivery"
