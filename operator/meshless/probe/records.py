"""A passive reader of TLS records (pure): what the probe learns from the bytes on the wire
that Python's `ssl` module does not expose.

The probe feeds every byte it sends and receives into one `RecordTap` per direction. From the
record headers (always cleartext) and the handshake messages that precede ChangeCipherSpec
(cleartext up to TLS 1.2) it tells:
- whether the peer speaks TLS at all (a record header with a known content type and version 3.x);
- in TLS 1.2, whether the server sent a CertificateRequest (handshake type 13);
- in TLS 1.3, how many bytes of encrypted handshake the client sent in its second flight
  (Certificate? + CertificateVerify? + Finished), from which `client_sent_certificate_message`
  infers whether a CertificateRequest came (RFC 8446 4.4.2: the client sends a Certificate
  message if and only if the server asked for one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
CONTENT_TYPES = frozenset({CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA})

CERTIFICATE_REQUEST = 13
CERTIFICATE = 11

HEADER_LEN = 5
MAX_RECORD_LEN = 2**14 + 2048  # TLSCiphertext limit (RFC 8446 5.2)
AEAD_TAG_LEN = 16  # every TLS 1.3 AEAD Python's ssl enables (GCM, ChaCha20-Poly1305, CCM)


@dataclass
class RecordTap:
    """Record headers of one direction of a connection, fed incrementally."""

    _buffer: bytearray = field(default_factory=bytearray)
    received: int = 0
    records: list[tuple[int, int]] = field(default_factory=list)  # (content type, length)
    not_tls: bool = False  # a header that no TLS peer would send
    cipher_spec_changed: bool = False
    _cleartext_handshake: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.not_tls:
            return
        self._buffer += data
        while len(self._buffer) >= HEADER_LEN:
            content_type, major, length = (
                self._buffer[0],
                self._buffer[1],
                int.from_bytes(self._buffer[3:5], "big"),
            )
            if content_type not in CONTENT_TYPES or major != 3 or length > MAX_RECORD_LEN:
                self.not_tls = True
                self._buffer.clear()
                return
            if len(self._buffer) < HEADER_LEN + length:
                return
            payload = bytes(self._buffer[HEADER_LEN : HEADER_LEN + length])
            del self._buffer[: HEADER_LEN + length]
            self.records.append((content_type, length))
            if content_type == CHANGE_CIPHER_SPEC:
                self.cipher_spec_changed = True
            elif content_type == HANDSHAKE and not self.cipher_spec_changed:
                self._cleartext_handshake += payload

    @property
    def spoke_tls(self) -> bool:
        """At least one well-formed record and nothing that is not TLS."""
        return bool(self.records) and not self.not_tls

    def cleartext_handshake_types(self) -> list[int]:
        """Types of the handshake messages sent before ChangeCipherSpec."""
        types: list[int] = []
        data = self._cleartext_handshake
        offset = 0
        while offset + 4 <= len(data):
            types.append(data[offset])
            offset += 4 + int.from_bytes(data[offset + 1 : offset + 4], "big")
        return types

    def encrypted_lengths(self) -> list[int]:
        """Lengths of the application_data records (in TLS 1.3: every encrypted record)."""
        return [length for content_type, length in self.records if content_type == APPLICATION_DATA]


def finished_length(cipher_name: str) -> int:
    """A TLS 1.3 Finished message: 4-byte header + the suite's hash length."""
    return 4 + (48 if cipher_name.endswith("SHA384") else 32)


def client_sent_certificate_message(second_flight: list[int], cipher_name: str) -> bool | None:
    """TLS 1.3: did the client's encrypted second flight carry more than its Finished?

    `second_flight` are the lengths of the application_data records the client wrote before
    its handshake completed. Each carries inner plaintext + 1 content-type byte + the AEAD tag
    (the client adds no padding). A flight of only Finished means no CertificateRequest came;
    anything longer holds a Certificate message (at least 8 bytes, even when empty). None when
    the flight is empty or shorter than a Finished (nothing to infer).
    """
    inner = sum(length - 1 - AEAD_TAG_LEN for length in second_flight)
    expected_finished = finished_length(cipher_name)
    if not second_flight or inner < expected_finished:
        return None
    return inner > expected_finished
