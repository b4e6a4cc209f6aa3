"""uvicorn's HTTP protocol, answering a request it cannot parse with the gateway's JSON error instead of plain text.

uvicorn refuses a request whose request line or headers don't parse (a URL past the parser's limits, raw non-ASCII
bytes in the path, garbage) itself, before the app sees it, with a text/plain 400. Every error the gateway sends is
``{"error": {"code", "message"}}``, so this subclass of the protocol uvicorn would pick ("auto": httptools, else
h11) writes that body instead and closes the connection, as uvicorn does.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.auto import AutoHTTPProtocol

_BODY = json.dumps({"error": {"code": "bad_request", "message": "the request line or headers are not valid HTTP "
                                                                  "(too long, or bytes HTTP does not allow)"}}).encode()
_RESPONSE = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
             b"connection: close\r\n\r\n%s" % (len(_BODY), _BODY))


class JsonErrorHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """The protocol class to give uvicorn as ``http=``."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_RESPONSE)
        self.transport.close()
