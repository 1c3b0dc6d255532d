"""Decoding a response's Content-Encoding by hand, so the body can be hashed both as received and
as decoded in one pass (`podcastpile.net.fetch`).

gzip and deflate use zlib; br needs the `brotli` module, 1.2 or later (earlier versions cannot
bound their output). Output comes in pieces of at most PIECE_BYTES, so memory stays flat however
far a body inflates, and the caller's size cap stops a decompression bomb. A body that does not
decode, or ends inside its compressed stream, is a PermanentError `bad-encoding`; an encoding
that cannot be decoded here is `unsupported-encoding`.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Protocol

from podcastpile.errors import PermanentError

PIECE_BYTES = 1 << 16  # the most one decoding step yields


class Decoder(Protocol):
    """Turns a body's bytes, as they arrive, into the decoded bytes (in bounded pieces)."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes `data` completes, in pieces of at most PIECE_BYTES."""
        ...

    def finish(self) -> Iterator[bytes]:
        """The body ended: what is left of the decoded bytes; PermanentError `bad-encoding` when
        the body ended inside its compressed stream."""
        ...


class _Identity:
    """No Content-Encoding: the body is the file."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _ZlibDecoder:
    """gzip or deflate, inflated in pieces of at most PIECE_BYTES.

    Bounded pieces keep memory flat whatever the ratio: a small body that inflates to gigabytes
    (a decompression bomb) is stopped by the caller's size cap, piece by piece, long before it
    could fill memory. Concatenated gzip members are decoded in turn (gzip's own rule), zero
    padding after one is skipped; bytes after a deflate stream are ignored, as browsers do.
    """

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._gzip = encoding != "deflate"
        self._inflater = self._new_inflater()
        # "deflate" should be zlib-wrapped, but some servers send raw deflate: decided on the
        # first bytes, as browsers (and httpx) do.
        self._may_be_raw = not self._gzip
        self._fed = False
        self._draining = False

    def _new_inflater(self) -> zlib._Decompress:
        return zlib.decompressobj(zlib.MAX_WBITS | 16 if self._gzip else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        while data or self._draining:
            if self._inflater.eof:
                data = self._next_member(data)
                if not data:
                    return
            out = self._inflate(data)
            data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
            # A full piece with no input left: zlib may still hold output; ask again with none.
            self._draining = len(out) == PIECE_BYTES and not self._inflater.eof
            if out:
                yield out

    def _inflate(self, data: bytes) -> bytes:
        try:
            out = self._inflater.decompress(data, PIECE_BYTES)
        except zlib.error as error:
            if not self._may_be_raw:
                raise PermanentError("bad-encoding", f"the {self.encoding} body does not decode: {error}") from None
            self._may_be_raw = False
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inflate(data)
        self._may_be_raw = False
        return out

    def _next_member(self, rest: bytes) -> bytes:
        """What follows a finished stream: the next gzip member's bytes, or b"" (nothing to decode)."""
        rest = rest.lstrip(b"\0") if self._gzip else b""
        if rest:
            self._inflater = self._new_inflater()
        return rest

    def finish(self) -> Iterator[bytes]:
        # `feed` drains zlib as it goes: nothing is left but to check the stream was whole.
        if self._fed and not self._inflater.eof:
            raise PermanentError("bad-encoding", f"the {self.encoding} body ends inside its compressed stream")
        return iter(())


class _BrotliDecoder:
    """br, through the `brotli` module (1.2 or later, whose output can be bounded as zlib's)."""

    def __init__(self, brotli: ModuleType) -> None:
        self._decompressor = brotli.Decompressor()
        self._error: type[Exception] = brotli.error
        self._fed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        decompressor = self._decompressor
        try:
            out = decompressor.process(data, output_buffer_limit=PIECE_BYTES)
            while True:
                if out:
                    yield out
                # Output held back by the limit must be taken before more input is accepted.
                if decompressor.is_finished() or decompressor.can_accept_more_data():
                    return
                out = decompressor.process(b"", output_buffer_limit=PIECE_BYTES)
        except self._error as error:
            raise PermanentError("bad-encoding", f"the br body does not decode: {error}") from None

    def finish(self) -> Iterator[bytes]:
        # The decompressor may still hold input it accepted: take its output until it ends, or
        # until it has nothing more to give (a body that ended mid-stream).
        decompressor = self._decompressor
        while self._fed and not decompressor.is_finished():
            try:
                out = decompressor.process(b"", output_buffer_limit=PIECE_BYTES)
            except self._error as error:
                raise PermanentError("bad-encoding", f"the br body does not decode: {error}") from None
            if not out:
                raise PermanentError("bad-encoding", "the br body ends inside its compressed stream")
            yield out


def _bounded_brotli() -> ModuleType | None:
    """The `brotli` module when installed in a version that can bound its output, else None."""
    try:
        brotli = importlib.import_module("brotli")
    except ImportError:
        return None
    return brotli if hasattr(brotli.Decompressor, "can_accept_more_data") else None


def decoder_for(content_encoding: str | None) -> Decoder:
    """The decoder of a response's Content-Encoding; PermanentError for one that cannot be decoded."""
    named = (part.strip().lower() for part in (content_encoding or "").split(","))
    codings = [coding for coding in named if coding and coding != "identity"]
    if not codings:
        return _Identity()
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _ZlibDecoder(codings[0])
    if codings == ["br"] and (brotli := _bounded_brotli()) is not None:
        return _BrotliDecoder(brotli)
    hint = " (needs the brotli module, 1.2 or later)" if codings == ["br"] else ""
    raise PermanentError("unsupported-encoding", f"Content-Encoding {content_encoding!r} cannot be decoded{hint}")
