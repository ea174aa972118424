"""Feature rows for the gradient-boosted tree runtimes (XGBoost, LightGBM).

Decodes request bodies into 2-D rows of numbers (CSV with empty cells as missing values, JSON, NPY, JSON
Lines) or libsvm sparse rows, and checks a row's width against the model's feature count so that a request of
the wrong shape fails with a message naming what the model expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from modelhost.runtimes import codecs
from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedContentType

LIBSVM = "text/libsvm"
X_LIBSVM = "text/x-libsvm"
_NAMES_SHOWN_MAX = 8
_DEFAULT_NAME_PREFIXES = ("f", "Column_")  # XGBoost's and LightGBM's names for unnamed features


@dataclass(frozen=True)
class FeatureSignature:
    """What a model takes: a fixed number of features per row, named or not."""

    n_features: int
    names: tuple[str, ...] = ()  # empty when the model was trained on unnamed columns

    def describe(self) -> str:
        """``4 features (sepal_length, ...)``; generated names (f0, Column_0) are left out."""
        text = f"{self.n_features} feature{'s' if self.n_features != 1 else ''}"
        named = [
            name
            for index, name in enumerate(self.names)
            if name not in {prefix + str(index) for prefix in _DEFAULT_NAME_PREFIXES}
        ]
        if named:
            shown = ", ".join(self.names[:_NAMES_SHOWN_MAX])
            more = ", ..." if len(self.names) > _NAMES_SHOWN_MAX else ""
            text += f" ({shown}{more})"
        return text


@dataclass(frozen=True, eq=False)  # arrays do not compare to one bool
class SparseRows:
    """libsvm rows in CSR form. An absent feature is a missing value, not a zero, as XGBoost reads libsvm."""

    indptr: np.ndarray  # int64, one more than the rows: row i holds entries indptr[i]:indptr[i + 1]
    indices: np.ndarray  # int64 feature index of each entry
    values: np.ndarray  # float32 value of each entry

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def width(self) -> int:
        """The fewest features a model must take for these rows: the highest index plus one."""
        return int(self.indices.max()) + 1 if len(self.indices) else 0

    def dense(self, n_features: int) -> np.ndarray:
        """The rows as a float32 array of ``n_features`` columns, NaN (missing) where no value was given."""
        rows = np.full((len(self), n_features), np.nan, dtype=np.float32)
        row_of_entry = np.repeat(np.arange(len(self)), np.diff(self.indptr))
        rows[row_of_entry, self.indices] = self.values
        return rows


def _as_text(body: bytes | str) -> str:
    return body if isinstance(body, str) else body.decode("utf-8")


def decode_libsvm(body: bytes | str) -> SparseRows:
    """``[label] index:value ...`` per line; the label (a first token without a colon) is ignored.

    Blank lines are skipped; ``qid:`` tokens and ``# comments`` are ignored, as XGBoost's own parser does.
    """
    indptr, indices, values = [0], [], []
    for number, line in enumerate(_as_text(body).splitlines(), start=1):
        tokens = line.partition("#")[0].split()
        if not tokens:
            continue
        for position, token in enumerate(tokens):
            index, colon, value = token.partition(":")
            if not colon:
                if position == 0:
                    continue  # the label: SageMaker's XGBoost ignores it at inference
                raise ValueError(f"line {number}: {token!r} is not index:value")
            if index == "qid":
                continue
            if not index.isdigit():
                raise ValueError(f"line {number}: {token!r} does not start with a feature index (0, 1, ...)")
            try:
                values.append(float(value))
            except ValueError:
                raise ValueError(f"line {number}: the value of {token!r} is not a number") from None
            indices.append(int(index))
        indptr.append(len(indices))
    if len(indptr) == 1:
        raise ValueError("the body has no libsvm rows")
    return SparseRows(
        np.asarray(indptr, dtype=np.int64),
        np.asarray(indices, dtype=np.int64),
        np.asarray(values, dtype=np.float32),
    )


def decode_csv(body: bytes | str) -> np.ndarray:
    """Numbers without a header, one row per line; an empty cell is a missing value (NaN), as in SageMaker."""
    try:
        return codecs.decode_csv(body)
    except ValueError:
        pass  # the fast parser rejects empty cells; find them, or the real mistake, line by line
    rows: list[list[str]] = []
    for number, line in enumerate(_as_text(body).splitlines(), start=1):
        if not line.strip():
            continue
        cells = [cell.strip() or "nan" for cell in line.split(",")]
        if rows and len(cells) != len(rows[0]):
            raise ValueError(f"line {number} has {len(cells)} values but the first row has {len(rows[0])}")
        for cell in cells:
            try:
                float(cell)
            except ValueError:
                raise ValueError(f"line {number}: {cell!r} is not a number") from None
        rows.append(cells)
    if not rows:
        raise ValueError("the body has no CSV rows")
    return np.asarray(rows, dtype=np.float64)


def _json_rows(payload: object) -> object:
    if isinstance(payload, dict):
        for key in ("instances", "inputs"):
            if key in payload:
                payload = payload[key]
                break
        else:
            raise ValueError('expected a list of rows, or an object with "instances" or "inputs"')
    if isinstance(payload, list) and payload and all(isinstance(row, dict) for row in payload):
        # SageMaker's common inference format: {"instances": [{"features": [1.5, 16.0]}, ...]}
        if not all("features" in row for row in payload):
            raise ValueError('every object in "instances" needs a "features" list')
        return [row["features"] for row in payload]
    if not isinstance(payload, list):
        raise ValueError("expected a list of rows")
    return payload


def decode_json(body: bytes | str) -> np.ndarray:
    """A row, a list of rows, or ``{"instances": ...}`` holding rows or ``{"features": row}`` objects."""
    return np.asarray(_json_rows(orjson.loads(body)))


_DECODERS: dict[str, Callable[[bytes | str], np.ndarray | SparseRows]] = {
    codecs.CSV: decode_csv,
    codecs.JSON: decode_json,
    codecs.NPY: codecs.decode_npy,
    codecs.JSONLINES: codecs.decode_jsonlines,
    codecs.X_JSONLINES: codecs.decode_jsonlines,
    LIBSVM: decode_libsvm,
    X_LIBSVM: decode_libsvm,
}
DENSE_TYPES: tuple[str, ...] = tuple(media for media in _DECODERS if media not in (LIBSVM, X_LIBSVM))
ALL_TYPES: tuple[str, ...] = tuple(_DECODERS)


def decode(body: bytes | str, content_type: str, supported: tuple[str, ...]) -> np.ndarray | SparseRows:
    """Decode ``body`` if its media type is one of ``supported``; a ``CodecError`` says what went wrong."""
    media = codecs.media_type(content_type)
    if media not in supported:
        raise UnsupportedContentType(
            f"Content type {content_type!r} is not supported; supported: {', '.join(supported)}"
        )
    try:
        return _DECODERS[media](body)
    except (ValueError, EOFError) as exc:
        raise UndecodableBody(f"Could not decode the {media} body: {exc}") from exc


def feature_rows(data: np.ndarray, signature: FeatureSignature, dtype: type[np.floating]) -> np.ndarray:
    """``data`` as a 2-D ``dtype`` array of rows of ``signature.n_features``; ``CodecError`` otherwise.

    A flat list of numbers is one row, unless the model takes one feature: then it is a column.
    """
    if data.ndim == 0 or (data.ndim == 1 and signature.n_features == 1):
        data = data.reshape(-1, 1)
    elif data.ndim == 1:
        data = data.reshape(1, -1)
    expected = f"The model takes rows of {signature.describe()}"
    if data.ndim != 2:
        raise CodecError(f"{expected}; the request is a {data.ndim}-dimensional array {data.shape}")
    if data.shape[1] != signature.n_features:
        raise CodecError(
            f"{expected}; the request's rows have {data.shape[1]} value{'s' if data.shape[1] != 1 else ''}. "
            f"Send {signature.n_features} numbers per row (no label column)"
        )
    if data.dtype == dtype:
        return data
    try:
        # JSON null becomes NaN (a missing value); numeric strings ("1.5") are accepted as numbers.
        return data.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{expected}, all numbers; the request holds {data.dtype} values: {exc}") from exc


def check_sparse_width(rows: SparseRows, signature: FeatureSignature) -> None:
    """Raise ``CodecError`` if a libsvm feature index is past the model's last feature."""
    if rows.width > signature.n_features:
        raise CodecError(
            f"The model takes rows of {signature.describe()}, indexed 0 to {signature.n_features - 1}; the "
            f"request uses feature index {rows.width - 1}"
        )
