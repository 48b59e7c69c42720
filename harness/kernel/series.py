"""A patch series as it comes from a mailing list -> one patch file per mail.

``--series FILE`` takes ``git format-patch --stdout`` output (several patches,
perhaps a cover letter) or ``b4 am``'s ``.mbx``, and splits it the way
``git am`` does: one message per patch, in file order; the cover letter (a
``0/N`` subject, or any message without a diff) is skipped. Each patch keeps
its Subject, decoded (RFC 2047 encoded words, folded header lines joined) and
with its ``[PATCH v2 3/5]`` prefix taken off, and its place ``3/5`` in the
series. Its body is decoded too (quoted-printable or base64 as lore sometimes
serves them), so GNU patch sees the diff as ``git am`` would.

The messages are split at ``From <sha> Mon Sep 17 00:00:00 2001``-style lines
only (the mbox "From_" line with a date), as git's mailsplit does: an unescaped
line starting with "From " in a commit message (``git format-patch`` writes it
as it is) would split the message with the stdlib's ``mailbox.mbox``. Each
message is then parsed with ``email`` (``policy.default``).

This module only reads mails and writes patch files; ``build.source`` turns
them into ``Patch`` records and applies them one after the other (-p1, each on
the result of the previous one), which is how a series applies.

``b4`` (Debian package ``b4``) was not used: what it adds over this module is
fetching a series from lore by message id, checking attestation and
collecting trailers from replies; a series already saved to a file needs
none of it (``b4 am MSGID`` makes the ``.mbx`` this module reads).
"""
from __future__ import annotations

import email
import email.policy
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

# "From <anything> <weekday> <month> <day> <hh:mm:ss> <year>", as mbox writers
# (git format-patch, b4, mutt) put before each message.
FROM_LINE = re.compile(
    rb"^From \S+ +(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep"
    rb"|Oct|Nov|Dec) +\d{1,2} \d{1,2}:\d{2}(?::\d{2})? (?:[+-]\d{4} )?\d{4}\s*$", re.M)
HAS_DIFF = re.compile(rb"^(?:diff --git |@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@|GIT binary patch)",
                      re.M)
PREFIX = re.compile(r"^\s*(?:\[[^\]]*\]|(?:re|fwd?|aw)\s*:)\s*", re.I)
NUMBER = re.compile(r"(?<![\w.])(\d+)/(\d+)(?![\w.])")


@dataclass(frozen=True)
class Mail:
    """One patch of a series: where it stands, its subject, its patch text."""
    subject: str          # decoded, one line, "[PATCH ...]" prefix removed
    part: str             # "3/5": from the subject's prefix, else its place in the file
    data: bytes           # headers (From, Date, Subject) + decoded body: what patch reads

    def file_name(self, index: int) -> str:
        """``git format-patch``'s name for it: ``0003-arm64-mm-the-subject.patch``."""
        slug = re.sub(r"[^A-Za-z0-9_.]+", "-", self.subject).strip("-.")[:52].rstrip("-.")
        return f"{index:04d}-{slug or 'patch'}.patch"


@dataclass(frozen=True)
class Split:
    """What a series file held."""
    mails: tuple[Mail, ...]
    skipped: tuple[str, ...]      # the cover letter and other mails without a diff, named
    messages: int                 # messages in the file
    announced: int                # N of "i/N" in the subjects (0: not numbered)

    def subjects(self) -> list[str]:
        return [m.subject for m in self.mails]


def messages(raw: bytes) -> list[bytes]:
    """The messages of an mbox (their bytes without the From_ line). Text before
    the first From_ line counts as a message when it has mail headers (a single
    mail saved without one)."""
    starts = [m.start() for m in FROM_LINE.finditer(raw)]
    chunks = []
    head = raw[:starts[0]] if starts else raw
    if re.match(rb"(?:[A-Za-z-]+:[^\n]*\n)*(?:Subject|From):", head.lstrip()):
        chunks.append(head.lstrip())
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(raw)
        body = raw[start:end]
        chunks.append(body.split(b"\n", 1)[1] if b"\n" in body else b"")
    return chunks


def is_series(raw: bytes) -> bool:
    """More than one message: a series, not a single patch."""
    return len(FROM_LINE.findall(raw)) > 1


def clean_subject(subject: str) -> tuple[str, str]:
    """(subject without its "[PATCH v2 3/5]" / "Re:" prefixes, "3/5" or "")."""
    text = " ".join(subject.split())
    part = ""
    while True:
        m = PREFIX.match(text)
        if not m:
            break
        if not part and m.group(0).lstrip().startswith("["):
            number = NUMBER.search(m.group(0))
            if number:
                part = f"{int(number.group(1))}/{int(number.group(2))}"
        text = text[m.end():]
    return text.strip(), part


def _body(msg: EmailMessage) -> bytes:
    """The decoded text of a message (every text part of a multipart one)."""
    parts = [p for p in msg.walk() if not p.is_multipart()
             and p.get_content_maintype() == "text"] if msg.is_multipart() else [msg]
    out = []
    for p in parts:
        payload = p.get_payload(decode=True)
        if isinstance(payload, bytes):
            out.append(payload if payload.endswith(b"\n") else payload + b"\n")
    return b"".join(out)


def split(raw: bytes) -> Split:
    """Split a series file's bytes; mails in file order, cover letter skipped."""
    found: list[tuple[str, str, bytes, str]] = []
    skipped: list[str] = []
    chunks = messages(raw)
    announced = 0
    for chunk in chunks:
        msg = email.message_from_bytes(chunk, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        full = " ".join(str(msg.get("Subject", "")).split())
        subject, part = clean_subject(full)
        body = _body(msg)
        if part:
            announced = max(announced, int(part.split("/")[1]))
        if part.startswith("0/") or not HAS_DIFF.search(body):
            skipped.append(f"the cover letter \"{subject}\"" if part.startswith("0/")
                           else f"\"{subject or '(no subject)'}\" (no diff)")
            continue
        head = "".join(f"{k}: {' '.join(str(msg[k]).split())}\n"
                       for k in ("From", "Date", "Subject") if msg.get(k) is not None)
        found.append((subject, part, head.encode() + b"\n" + body, full))
    total = len(found)
    mails = tuple(Mail(subject or "(no subject)", part or f"{i}/{total}", data)
                  for i, (subject, part, data, _) in enumerate(found, 1))
    return Split(mails, tuple(skipped), len(chunks), announced)


def materialise(split_: Split, origin: bytes, root: Path) -> list[tuple[Mail, Path]]:
    """Write each mail as a patch file under ``root/<digest of the series file>/``
    (content-addressed: the same series file gives the same files, written once,
    atomically) and return them with their paths."""
    folder = root / hashlib.sha256(origin).hexdigest()[:24]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, mail in enumerate(split_.mails, 1):
        path = folder / mail.file_name(index)
        if not path.is_file() or path.read_bytes() != mail.data:
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(mail.data)
            os.replace(tmp, path)
        out.append((mail, path))
    return out


def describe(path: Path, split_: Split) -> str:
    """One line naming the patches a series file holds (and what was skipped)."""
    names = "; ".join(f"{m.part} {m.subject}" for m in split_.mails)
    text = f"{path}: a series of {len(split_.mails)} patches ({names})"
    if split_.skipped:
        text += "; skipped " + ", ".join(split_.skipped)
    if split_.announced and split_.announced != len(split_.mails):
        text += f"; the subjects announce {split_.announced} patches, " \
                f"{len(split_.mails)} are in the file"
    return text


class SeriesFile(str):
    """A path given with ``--series``: it must hold patch mails, applied as a
    series. It travels in the same list as ``--patch`` paths (a ``str``, so the
    order of the command line is kept through ``BuildRequest.patches``)."""


# The command-line help of --series and --patch, shared by every command that
# builds a kernel (build, boot, run, matrix, bisect-run).
SERIES_HELP = ("apply a patch series from a mailing list after patches/series (and after "
               "any --patch given before it): 'git format-patch --stdout' output or b4 "
               "am's .mbx. The cover letter is skipped, each mail applies on the one "
               "before (as git am), a mail that does not apply is named by its place and "
               "Subject, and the Subjects go in the report (repeatable; --no-series leaves out "
               "patches/series, not this)")
PATCH_HELP = ("apply this patch after patches/series (repeatable; a file of several mails "
              "is split and applied as --series does, and said so)")
