"""The steps of serving requests in batches: decode one request, predict a batch, split and encode it.

Shared by the two places that batch: the batching dispatcher (``batcher.py``, behind the HTTP contract) and
the frame runner (``frame_runner.py``, behind the router's frames). Synchronous; called on handler threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from modelhost.errors import ModelhostError
from modelhost.worker.dispatch import WorkReply, WorkRequest, error_reply, unexpected_failure
from modelhost.worker.pipeline import Decoded, HandlerFailed, Pipeline

JoinKey = tuple[object, tuple[int, ...]]
ClockNs = Callable[[], int]


@dataclass(frozen=True, slots=True)
class Pending:
    """A decoded request waiting for its batch."""

    decoded: Decoded
    rows: np.ndarray | None  # its rows for a joined predict call; None: it is predicted alone
    key: JoinKey | None  # requests join only with equal keys
    submitted_ns: int  # when the transport handed it over
    decode_start_ns: int
    queued_ns: int  # decoded, waiting for its batch from here

    @property
    def row_count(self) -> int:
        """Rows as the batch policy counts them: a request that cannot join counts as one."""
        return 1 if self.rows is None else max(1, len(self.rows))


def join_key(rows: np.ndarray | None) -> JoinKey | None:
    """Rows of equal dtype and row shape concatenate without changing any value; None: cannot join."""
    if rows is None or len(rows) == 0:
        return None
    # Strings of different lengths concatenate losslessly ("<U5" with "<U9" gives "<U9").
    dtype: object = rows.dtype.kind if rows.dtype.kind in "US" else rows.dtype
    return dtype, rows.shape[1:]


def split_rows(prediction: object, counts: Sequence[int]) -> list[object]:
    """One slice of ``prediction`` per request, by its row count, in order."""
    total = sum(counts)
    # A list may be ragged (entities, token embeddings): only its length matters, never its shape.
    if not isinstance(prediction, list | tuple) and (
        not isinstance(prediction, np.ndarray) or prediction.ndim == 0
    ):
        raise HandlerFailed(
            f"predict_fn returned a {type(prediction).__name__} for a batch of {total} rows from "
            f"{len(counts)} requests; a batching predict_fn must return an array or list with one result "
            "per row (docs/batching.md)"
        )
    if len(prediction) != total:
        raise HandlerFailed(
            f"predict_fn returned {len(prediction)} results for a batch of {total} rows from {len(counts)} "
            "requests; a batching predict_fn must return one result per row, in order (docs/batching.md)"
        )
    parts: list[object] = []
    start = 0
    for count in counts:
        parts.append(prediction[start : start + count])
        start += count
    return parts


def decode_one(
    pipeline: Pipeline, request: WorkRequest, submitted_ns: int, clock_ns: ClockNs
) -> Pending | WorkReply:
    """input_fn and the rows for joining; a request that fails decoding gets its own error reply."""
    started_ns = clock_ns()
    try:
        data = pipeline.decode(request.body, request.content_type, request.accept, request.headers)
        rows = pipeline.batch_rows(data.data)
    except ModelhostError as exc:
        return error_reply(exc, _us(started_ns - submitted_ns), _us(clock_ns() - started_ns), 0)
    except Exception as exc:
        return error_reply(unexpected_failure(exc), 0, 0, 0)
    return Pending(data, rows, join_key(rows), submitted_ns, started_ns, clock_ns())


def predict_batch(pipeline: Pipeline, batch: Sequence[Pending], clock_ns: ClockNs) -> list[WorkReply]:
    """One predict_fn call for ``batch`` (joined rows, or the one request's data as is), one reply each."""
    try:
        return _predict_and_encode(pipeline, batch, clock_ns)
    except Exception as exc:
        return [error_reply(unexpected_failure(exc), 0, 0, 0) for _ in batch]


def _predict_and_encode(pipeline: Pipeline, batch: Sequence[Pending], clock_ns: ClockNs) -> list[WorkReply]:
    counts = [0 if entry.rows is None else len(entry.rows) for entry in batch]
    total_rows = sum(counts) if len(batch) > 1 or batch[0].rows is not None else 1
    started_ns = clock_ns()
    try:
        if len(batch) == 1:
            # Alone, a request's data goes to predict_fn exactly as input_fn returned it.
            only = batch[0].decoded
            parts: list[object] = [pipeline.predict(only.data, only.context)]
        else:
            joined = np.concatenate([entry.rows for entry in batch if entry.rows is not None])
            parts = split_rows(pipeline.predict(joined, None), counts)
    except ModelhostError as exc:
        # One prediction for all: when it fails, every request of the batch gets its error.
        ended_ns = clock_ns()
        return [error_reply(exc, *_timings(entry, started_ns, ended_ns, 0), total_rows) for entry in batch]
    ended_ns = clock_ns()
    replies: list[WorkReply] = []
    for entry, part in zip(batch, parts, strict=True):
        encode_start_ns = clock_ns()
        try:
            reply = pipeline.encode(part, entry.decoded, total_rows)
        except ModelhostError as exc:
            timings = _timings(entry, started_ns, ended_ns, clock_ns() - encode_start_ns)
            replies.append(error_reply(exc, *timings, total_rows))
            continue
        queue_us, model_us = _timings(entry, started_ns, ended_ns, clock_ns() - encode_start_ns)
        replies.append(
            WorkReply(200, reply.body, reply.content_type, reply.headers, queue_us, model_us, total_rows)
        )
    return replies


def _timings(entry: Pending, predict_start_ns: int, predict_end_ns: int, encode_ns: int) -> tuple[int, int]:
    """(queue_us, model_us): waiting for a thread and a batch; working on input, its batch, output."""
    waited_ns = (entry.decode_start_ns - entry.submitted_ns) + (predict_start_ns - entry.queued_ns)
    worked_ns = (entry.queued_ns - entry.decode_start_ns) + (predict_end_ns - predict_start_ns) + encode_ns
    return _us(waited_ns), _us(worked_ns)


def _us(ns: int) -> int:
    return ns // 1000
