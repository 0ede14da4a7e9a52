"""The HTTP/1.1 protocol the services run under uvicorn: uvicorn's httptools protocol,
which buffers a request's head whatever its size (a 50 MB header field is read whole),
with the bounds of shared.runtime.headers kept while the head arrives. A request over
them is answered 414 or 431 and its connection closed, having buffered at most one read
of the socket beyond them.

    uvicorn ... --http shared.runtime.protocol:BoundedHttpToolsProtocol"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from shared.runtime.headers import MAX_HEADER_BYTES, MAX_URL_BYTES, refusal


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        """A request has begun and its headers are not complete."""
        self._url_bytes = 0
        self._header_bytes = 0
        self._unparsed = 0
        """Bytes of reads made entirely inside the head: what the parser may be holding
        of a field it has not finished."""
        self._refusal: int | None = None

    def data_received(self, data: bytes) -> None:
        inside = self._in_head
        super().data_received(data)
        if inside and self._in_head and self._refusal is None:
            self._unparsed += len(data)
            if self._unparsed > MAX_URL_BYTES + MAX_HEADER_BYTES:
                self._refuse(431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._url_bytes = self._header_bytes = self._unparsed = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            self._refusal = 414
            raise _HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refusal = 431
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """The parser stopped: for a head over the bounds, say so (else a plain 400)."""
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(self._refusal)

    def _refuse(self, status: int) -> None:
        self._refusal = status
        headers, body = refusal(status)
        head = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *headers]:
            head += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
