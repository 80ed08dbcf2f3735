"""Text armor for binary intelhub objects (certificates, rosters, revocation lists, packets).

Armored files are plain text so they can be mailed, diffed and marked: lines
starting with ``#`` before the armor are comments (the example federation uses
them to say EXAMPLE ONLY). Readers accept raw binary too.
"""

from __future__ import annotations

import base64
import binascii
import textwrap

from .errors import KeyFileError

_BEGIN = "-----BEGIN INTELHUB {}-----"
_END = "-----END INTELHUB {}-----"


def armor(kind: str, data: bytes, comments: list[str] | tuple[str, ...] = ()) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 64))
    head = "".join(f"# {c}\n" for c in comments)
    return f"{head}{_BEGIN.format(kind)}\n{body}\n{_END.format(kind)}\n"


def dearmor(kind: str, data: bytes, source: str = "input") -> bytes:
    """The binary object inside ``data``; ``data`` may also be the raw binary itself."""
    begin = _BEGIN.format(kind).encode()
    if begin not in data:
        if data[:1] in (b"#", b"-"):
            raise KeyFileError(f"{source}: no '{_BEGIN.format(kind)}' block found (is it a {kind.lower()} file?)")
        return data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{source}: armored file is not ASCII text") from None
    lines = text.splitlines()
    if _BEGIN.format(kind) not in lines:
        raise KeyFileError(f"{source}: the '{_BEGIN.format(kind)}' line must stand on a line of its own")
    start = lines.index(_BEGIN.format(kind))
    try:
        stop = lines.index(_END.format(kind), start)
    except ValueError:
        raise KeyFileError(f"{source}: missing '{_END.format(kind)}' line (file truncated?)") from None
    for extra in lines[:start] + lines[stop + 1 :]:
        if extra.strip() and not extra.startswith("#"):
            raise KeyFileError(f"{source}: unexpected text outside the armor: {extra[:40]!r}")
    try:
        return base64.b64decode("".join(lines[start + 1 : stop]), validate=True)
    except binascii.Error:
        raise KeyFileError(f"{source}: the armored block is not valid base64") from None
