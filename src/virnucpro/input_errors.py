"""One line for each mistake an input can hold: what the reader tells the user.

The record parser (dnaio) raises its own messages; these put the file, the record's number
and id, and a short excerpt into one line, instead of a 500-character dump with escaped line
ends.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from virnucpro.errors import InputError


def display(path: str) -> str:
    """How messages name an input."""
    return "stdin" if path == "-" else path


_FASTQ_TRUNCATED = "Premature end of file encountered. The incomplete final record was: "
_FASTQ_DESCRIPTIONS = re.compile(r"Sequence descriptions don't match \('(.*?)' != ")
_EXCERPT_CHARS = 30  # per line of a record quoted in a message


def fastq_error(path: str, message: str, line: int | None, number: int,
                 previous: str | None) -> str:
    """One line for a FASTQ format error in record `number` (exact: dnaio raises it before
    yielding that record): the record's id where the error shows it (else the previous
    record's, to find it by), and a short excerpt of a truncated record rather than dnaio's
    500-character dump with escaped line ends."""
    where = f"invalid FASTQ at line {line + 1}" if line is not None else "invalid FASTQ"
    if message.startswith(_FASTQ_TRUNCATED):
        lines = _quoted_text(message[len(_FASTQ_TRUNCATED):]).split("\n")
        excerpt = ", ".join(repr(_shorten(line)) for line in lines[:4] if line)
        return (f"{path}: record {number}{_record_label(lines[0][1:], previous)}: {where}: "
                f"the file ends inside this record (truncated file?); it reads {excerpt}")
    message = " ".join(message.split())
    described = _FASTQ_DESCRIPTIONS.match(message)
    label = _record_label(described.group(1) if described else "", previous)
    return f"{path}: record {number}{label}: {where}: {message}"


def _record_label(header: str, previous: str | None) -> str:
    """' ({id!r})' from a header, else ' (after {previous id!r})', else ''."""
    words = header.split(maxsplit=1)
    if words:
        return f" ({words[0]!r})"
    after = previous.split(maxsplit=1) if previous else []
    return f" (after {after[0]!r})" if after else ""


def _quoted_text(text: str) -> str:
    """The string a Python repr spells (dnaio quotes the record so), or `text` itself."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


def _shorten(text: str) -> str:
    text = text.removesuffix("...")  # dnaio's own cut, after 500 characters
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS - 3] + "..."


def duplicate(paths: Sequence[str], first: int, repeat: int, rid: str) -> InputError:
    mask = (1 << 40) - 1
    return InputError(f"{display(paths[repeat >> 40])}: record {repeat & mask}: duplicate "
                      f"record id {rid!r} (first seen in {display(paths[first >> 40])}, "
                      f"record {first & mask})")


def looks_binary(data: bytes) -> bool:
    sample = data[:4096]
    return b"\x00" in sample or sum(b > 126 or (b < 32 and b not in b"\t\n\r\x0b\x0c")
                                    for b in sample) > len(sample) // 10


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
