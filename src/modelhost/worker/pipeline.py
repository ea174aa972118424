"""One invocation through the handler chain: input_fn → predict_fn → output_fn, or transform_fn.

Built once the model is loaded; ``invoke`` (one request) and the stages ``decode``/``predict``/``encode`` (the
batching dispatcher) run on handler threads, never on the event loop. User functions replace the runtime's
defaults one by one, exactly as the SageMaker inference toolkit combines them.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelhost.errors import ModelhostError
from modelhost.runtimes import codecs
from modelhost.runtimes.codecs import CodecError, UndecodableBody
from modelhost.runtimes.runtime import Runtime
from modelhost.worker.batching import BatchPolicy
from modelhost.worker.context import HandlerContext
from modelhost.worker.failure import describe_exception
from modelhost.worker.handler import BATCHING_FLAG, HandlerFunction, UserHandlers

# User input_fn/transform_fn receive these bodies as str (UTF-8) and every other type as bytes, as the
# inference toolkit does (its UTF8_TYPES). Handler code written for SageMaker relies on it (for example it
# calls .decode() on text/plain bodies), so text/* in general stays bytes. Parameters are ignored here:
# "text/csv; charset=utf-8" is text too.
TEXT_MEDIA_TYPES = frozenset({codecs.JSON, codecs.CSV})
DEFAULT_CONTENT_TYPE = codecs.JSON
_NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful invocation's response."""

    body: bytes
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...] = _NO_HEADERS  # set by the handler through its context
    rows: int = 1  # rows predicted for this request (see ``Pipeline.batch_rows``); 1 for transform_fn


@dataclass(frozen=True, slots=True)
class Decoded:
    """One request after input_fn: what predict_fn gets, and what output_fn will need."""

    data: object
    accept: str  # the media type to answer with, already checked against the runtime's encoders
    context: HandlerContext | None


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A streamed invocation's response: iterating ``chunks`` runs the handler's iterator, piece by piece."""

    chunks: StreamChunks
    content_type: bytes
    context: HandlerContext | None  # its response headers are final once the first chunk exists

    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return self.context.response_headers if self.context is not None else _NO_HEADERS


class HandlerFailed(ModelhostError):
    """User handler code or the model raised; the message is ``<ExceptionType>: <message>``."""


def _as_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, Iterator):
        # A streaming handler (docs/streaming.md) called through InvokeEndpoint: its pieces, joined.
        return b"".join(_as_bytes(item) for item in body)
    # The toolkit's model servers JSON-encode any other output_fn result; keep that for handler code
    # that returns a list or dict.
    return codecs.dumps_json(body)


def _content_type_bytes(content_type: object) -> bytes:
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    if not isinstance(content_type, str):
        raise TypeError(
            f"the content type of a (body, content_type) result must be a str, not {content_type!r}"
        )
    if "\r" in content_type or "\n" in content_type:
        raise ValueError(f"content type {content_type!r} contains a line break")
    return content_type.encode("latin-1")


class Pipeline:
    """The loaded model and the functions to run it with. Safe to call from several threads at once."""

    def __init__(
        self,
        *,
        model: object,
        runtime: Runtime,
        handlers: UserHandlers,
        system_properties: Mapping[str, object],
        default_accept: str,
        batching: BatchPolicy | None = None,
    ) -> None:
        self.model = model
        # Dynamic batching: the Environment's policy, else the model's own (Triton's dynamic_batching).
        self.batching = batching
        self._runtime = runtime
        self._input_fn = handlers.input_fn
        self._predict_fn = handlers.predict_fn
        self._output_fn = handlers.output_fn
        self._transform_fn = handlers.transform_fn
        self._supports_batching = handlers.supports_batching
        self._system_properties = system_properties
        self._default_accept = default_accept
        # Decided once: a context is built per request only if some function will receive it.
        self._wants_context = any(
            fn is not None and fn.takes_context
            for fn in (self._input_fn, self._predict_fn, self._output_fn, self._transform_fn)
        )

    @property
    def unbatchable_reason(self) -> str | None:
        """Why predict_fn must get one request at a time, or None when it takes batches (docs/batching.md)."""
        if self._transform_fn is not None:
            return "the handler defines transform_fn, which always runs one request at a time"
        if self._predict_fn is not None and not self._supports_batching:
            return f"the handler's predict_fn does not declare {BATCHING_FLAG} = True"
        return None

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Reply:
        """Run one request; raises ``CodecError`` (the client must fix the request) or ``HandlerFailed``."""
        if self._transform_fn is not None:
            return self._transform(body, content_type, accept, headers)
        decoded = self.decode(body, content_type, accept, headers)
        rows = self.batch_rows(decoded.data)
        prediction = self.predict(decoded.data, decoded.context)
        return self.encode(prediction, decoded, 1 if rows is None else len(rows))

    def invoke_stream(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> StreamReply:
        """Like ``invoke``, but an iterator that predict_fn, output_fn or transform_fn returns is not
        consumed here: each item becomes a piece of the body as it is produced (docs/streaming.md). Raises as
        ``invoke`` does; iterating the chunks raises ``HandlerFailed``."""
        if self._transform_fn is not None:
            result, accept, context = self._transform_result(body, content_type, accept, headers)
        else:
            decoded = self.decode(body, content_type, accept, headers)
            prediction = self.predict(decoded.data, decoded.context)
            accept, context = decoded.accept, decoded.context
            try:
                result = self._output(prediction, decoded)
            except CodecError:
                raise
            except BaseException as exc:
                raise _failed(exc) from exc
        try:
            body_result, content_type_bytes = _split(result, accept)
            return StreamReply(StreamChunks(body_result), _content_type_bytes(content_type_bytes), context)
        except BaseException as exc:
            raise _failed(exc) from exc

    def decode(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Decoded:
        """input_fn, after checking the Accept can be answered. Not for transform_fn handlers."""
        content_type = content_type or DEFAULT_CONTENT_TYPE
        if not accept or accept == "*/*":
            accept = self._default_accept
        context = HandlerContext(headers, self._system_properties) if self._wants_context else None
        try:
            if self._output_fn is None:
                # Fail an unanswerable Accept (406) before paying for decoding and prediction.
                accept = self._runtime.accept_media_type(accept)
            return Decoded(self._input(body, content_type, context), accept, context)
        except CodecError:
            raise
        except BaseException as exc:  # anything user code raises, SystemExit included, is the model's error
            raise _failed(exc) from exc

    def batch_rows(self, data: object) -> np.ndarray | None:
        """``data`` as rows along axis 0 that may share a predict call with other requests' rows, or None."""
        if self._predict_fn is None:
            return self._runtime.batch_rows(data, self.model)
        # A user predict_fn that declares the batch contract takes input_fn's arrays as they are.
        return data if isinstance(data, np.ndarray) and data.ndim >= 1 else None

    def predict(self, data: object, context: HandlerContext | None) -> object:
        """predict_fn on one request's data, or on the joined rows of a batch (then ``context`` is None)."""
        try:
            if self._predict_fn is None:
                return self._runtime.predict_fn(data, self.model)
            return _call(self._predict_fn, context, data, self.model)
        except CodecError:
            raise
        except BaseException as exc:
            raise _failed(exc) from exc

    def encode(self, prediction: object, decoded: Decoded, rows: int) -> Reply:
        """output_fn for one request's share of a prediction."""
        try:
            return _reply(self._output(prediction, decoded), decoded.accept, decoded.context, rows)
        except CodecError:
            raise
        except BaseException as exc:
            raise _failed(exc) from exc

    def _output(self, prediction: object, decoded: Decoded) -> object:
        if self._output_fn is None:
            if isinstance(prediction, Iterator):
                return prediction  # pieces from a streaming predict_fn go out as they are (docs/streaming.md)
            return self._runtime.output_fn(prediction, decoded.accept)
        return _call(self._output_fn, decoded.context, prediction, decoded.accept)

    def _transform(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Reply:
        result, accept, context = self._transform_result(body, content_type, accept, headers)
        try:
            return _reply(result, accept, context, 1)
        except BaseException as exc:
            raise _failed(exc) from exc

    def _transform_result(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> tuple[object, str, HandlerContext | None]:
        """transform_fn's result, with the Accept and the context it was called with."""
        assert self._transform_fn is not None
        content_type = content_type or DEFAULT_CONTENT_TYPE
        if not accept or accept == "*/*":
            accept = self._default_accept
        context = HandlerContext(headers, self._system_properties) if self._wants_context else None
        try:
            raw = self._handler_input(body, content_type)
            result = _call(self._transform_fn, context, self.model, raw, content_type, accept)
        except CodecError:
            raise
        except BaseException as exc:
            raise _failed(exc) from exc
        return result, accept, context

    def _handler_input(self, body: bytes, content_type: str) -> bytes | str:
        if codecs.media_type(content_type) not in TEXT_MEDIA_TYPES:
            return body
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UndecodableBody(f"The {content_type} body is not valid UTF-8: {exc}") from exc

    def _input(self, body: bytes, content_type: str, context: HandlerContext | None) -> object:
        if self._input_fn is None:
            # The runtime's decoders parse bytes directly; decoding to str first would only cost time.
            return self._runtime.input_fn(body, content_type)
        return _call(self._input_fn, context, self._handler_input(body, content_type), content_type)


def _failed(exc: BaseException) -> HandlerFailed:
    message = describe_exception(exc)
    sys.stderr.write(f"invocation failed: {message}\n" + "".join(traceback.format_exception(exc)))
    return HandlerFailed(message)


def _split(result: object, accept: str) -> tuple[object, object]:
    # output_fn/transform_fn may return the body alone (typed as Accept) or (body, content_type).
    if isinstance(result, tuple):
        if len(result) != 2:
            raise TypeError(f"expected (body, content_type) from output_fn, got a {len(result)}-tuple")
        return result[0], result[1]
    return result, accept


def _reply(result: object, accept: str, context: HandlerContext | None, rows: int) -> Reply:
    body, content_type = _split(result, accept)
    headers = context.response_headers if context is not None else _NO_HEADERS
    return Reply(_as_bytes(body), _content_type_bytes(content_type), headers, rows)


class StreamChunks:
    """The pieces of a streamed body as bytes, produced as they are asked for: a handler's iterator item by
    item (empty items skipped), any other result as one piece. Its failures become ``HandlerFailed``."""

    __slots__ = ("_items",)

    def __init__(self, body: object) -> None:
        self._items: Iterator[object] = body if isinstance(body, Iterator) else iter((body,))

    def __iter__(self) -> StreamChunks:
        return self

    def __next__(self) -> bytes:
        while True:
            try:
                data = _as_bytes(next(self._items))
            except StopIteration:
                raise
            except BaseException as exc:
                raise _failed(exc) from exc
            if data:
                return data

    def close(self) -> None:
        """Stop the handler's iterator early (the client went away): a generator runs its cleanup."""
        close = getattr(self._items, "close", None)
        if close is not None:
            try:
                close()
            except BaseException as exc:
                _failed(exc)  # written to the log; nobody is left to tell


def _call(function: HandlerFunction, context: HandlerContext | None, *args: object) -> object:
    if function.takes_context:
        return function.fn(*args, context)
    return function.fn(*args)
