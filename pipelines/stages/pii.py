"""Redaction of e-mail addresses, IP addresses and phone numbers, with RE2 on Arrow.

Each kind is one RE2 pattern run by :func:`pyarrow.compute.count_substring_regex` over the batch
and, only for the documents with a match, :func:`pyarrow.compute.replace_substring_regex`; the
counts are of non-overlapping leftmost matches, exactly what the replacement replaces. Kinds run
in the order e-mail, IPv4, IPv6, phone, so an address's digits are gone before the phone pattern
looks for numbers.

The patterns favour precision: a phone number needs a leading ``+`` and country code, a
North-American ``(555) 123-4567`` / ``555-123-4567`` / ``555.123.4567`` shape, or a European
trunk prefix ``0`` (``030 1234567``, ``020 7946 0958``, ``06 12 34 56 78``); bare digit runs,
years, year ranges, dates and version numbers do not match. An IPv4 address is four octets of
0-255 not embedded in a longer dotted number (``1.2.3.4.5`` is left alone); IPv6 covers the full
eight-group form and ``::`` forms with at least three groups. Known misses: phone numbers written
without any separator, and four-part version numbers whose parts are all at most 255.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import PiiConfig
from pipelines.stages.base import Stage, StageOutput
from pipelines.stages.normalize import text_array

__all__ = ["RedactPII"]

EMAIL = r"[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_DOTTED_QUAD = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
# The leading and trailing context are captured and written back (RE2 has no lookaround); a
# trailing "." is allowed only at the end of a sentence, not before another number. An address
# at the very start of a document has its own pattern: Arrow counts matches by consuming them,
# and after a match "^" would match again where the rest of the text starts.
IPV4 = rf"([^\w.]){_DOTTED_QUAD}(\.?(?:$|[^\w.]))"
IPV4_AT_START = rf"^{_DOTTED_QUAD}(\.?(?:$|[^\w.]))"

_H = r"[0-9A-Fa-f]{1,4}"
IPV6 = (
    rf"\b(?:(?:{_H}:){{7}}{_H}"
    rf"|(?:{_H}:){{2,6}}:{_H}(?::{_H}){{0,4}}"
    rf"|{_H}::(?:{_H}:){{1,5}}{_H})\b"
)

PHONE = (
    # +CC, an optional (area code), then 7 to 14 digits with single spaces, dots or dashes
    r"\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,13}\b"
    # North America: (555) 123-4567, 555-123-4567, 555.123.4567
    r"|\(\d{3}\) ?\d{3}[.-]\d{4}\b"
    r"|\b\d{3}[.-]\d{3}[.-]\d{4}\b"
    # Europe with trunk prefix 0: 030 1234567, 089/1234567, 020 7946 0958; 06 12 34 56 78
    r"|\b0[1-9]\d{1,3}[ /-]\d{3,4}[ -]?\d{2,5}\b"
    r"|\b0[1-9](?:[ .-]\d{2}){4}\b"
)


def _rewrite(literal: str) -> str:
    """An RE2 rewrite string that inserts ``literal`` as is."""
    return literal.replace("\\", "\\\\")


class RedactPII(Stage):
    """Replace e-mail addresses, IP addresses and phone numbers with the configured tokens.

    Never drops a document. Counters: ``emails``, ``ip_addresses``, ``phone_numbers``, each the
    number of matches replaced in the batch (0 for a kind that is switched off).
    """

    name = "pii"

    def __init__(self, config: PiiConfig) -> None:
        self.config = config
        # (counter, pattern, rewrite, anchored: at most one match, at the start)
        self._passes: list[tuple[str, str, str, bool]] = []
        if config.emails:
            self._passes.append(("emails", EMAIL, _rewrite(config.email_replacement), False))
        if config.ip_addresses:
            ip = _rewrite(config.ip_replacement)
            self._passes.append(("ip_addresses", IPV4_AT_START, rf"{ip}\1", True))
            # Two passes: a match consumes the character that the next address needs as its
            # leading context ("1.1.1.1 2.2.2.2"), so every other one waits for the second.
            self._passes.append(("ip_addresses", IPV4, rf"\1{ip}\2", False))
            self._passes.append(("ip_addresses", IPV4, rf"\1{ip}\2", False))
            self._passes.append(("ip_addresses", IPV6, ip, False))
        if config.phone_numbers:
            phone = _rewrite(config.phone_replacement)
            self._passes.append(("phone_numbers", PHONE, phone, False))

    def apply(self, table: pa.Table) -> StageOutput:
        """Redact the ``text`` column of one batch; other columns pass through unchanged."""
        counters = {"emails": 0, "ip_addresses": 0, "phone_numbers": 0}
        if not self.config.enabled or table.num_rows == 0 or not self._passes:
            return StageOutput(table, counters=counters)
        text = text_array(table)
        for counter, pattern, rewrite, anchored in self._passes:
            if anchored:
                hits = pc.match_substring_regex(text, pattern)
            else:
                hits = pc.count_substring_regex(text, pattern)
            found = hits.to_numpy(zero_copy_only=False).astype(np.int64)
            rows = np.flatnonzero(found)
            if len(rows) == 0:
                continue
            counters[counter] += int(found.sum())
            mask = np.zeros(len(text), dtype=np.bool_)
            mask[rows] = True
            redacted = pc.replace_substring_regex(text.take(pa.array(rows)), pattern, rewrite)
            text = pc.replace_with_mask(text, pa.array(mask), redacted)
        column = table.schema.get_field_index("text")
        field = table.schema.field(column).with_type(text.type)
        return StageOutput(table.set_column(column, field, text), counters=counters)
