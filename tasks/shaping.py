"""Shape raw Nightscout documents into typed raw-table frames, with Polars expressions only.

``shape(table, docs, context)`` turns the frame the client parsed (whatever columns the
uploaders sent) into the table's declared columns, plus side outputs so nothing is
dropped silently: the duplicates removed (``audit.duplicates``), the rows that cannot be
placed at all (no usable time, or a time outside the requested window) as rejects, and the
documents the source marks deleted (``isValid: false``), which never become rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

import numpy as np
import polars as pl
from polars.datatypes import DataTypeClass

from tasks.json_documents import SetAside
from tasks.tables import DUPLICATES_SCHEMA, REJECTS_SCHEMA, RawTable, raw_table

__all__ = [
    "SOURCE_DELETED_SCHEMA",
    "ShapeContext",
    "Shaped",
    "empty_like",
    "profile_timezone",
    "set_aside",
    "shape",
    "unreadable_rejects",
]

_UTC = pl.Datetime("us", "UTC")
_ROW: Final = "__row"

# Documents the source marks deleted: their id and time, so a caller can count them per day
# and remove them from the lake; the rest of such a document is not kept.
SOURCE_DELETED_SCHEMA: Final = pl.Schema({"record_id": pl.String(), "event_at": _UTC})


@dataclass(frozen=True)
class ShapeContext:
    """What a batch of documents is shaped for: site, timezone, window and run."""

    site_id: str
    timezone: str
    window_start: datetime
    window_end: datetime
    run_id: str
    ingested_at: datetime

    @property
    def window_date(self) -> pl.Expr:
        return pl.lit(self.window_start.date(), pl.Date)


@dataclass(frozen=True)
class Shaped:
    """A shaped batch: rows for the raw table, plus what was set aside and why.

    ``deleted`` holds the documents inside the window that the source marks deleted
    (``isValid: false``, Nightscout's soft delete): they are neither rows nor rejects.
    """

    rows: pl.DataFrame
    duplicates: pl.DataFrame
    rejects: pl.DataFrame
    deleted: pl.DataFrame


def empty_like(schema: pl.Schema) -> pl.DataFrame:
    """An empty frame with ``schema``."""
    return pl.DataFrame(schema=schema)


# --------------------------------------------------------------------------- helpers


def _col(docs: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    """Column ``name`` cast leniently to ``dtype``; null when the uploader never sent it."""
    if name not in docs.columns:
        return pl.lit(None, dtype)
    source = docs.schema[name]
    if isinstance(source, (pl.Struct, pl.List, pl.Array)):
        if dtype != pl.String():
            return pl.lit(None, dtype)  # a list or object where a number belongs: not a value
        if isinstance(source, pl.Struct):
            return pl.col(name).struct.json_encode()
        return pl.struct(pl.col(name).alias("v")).struct.json_encode().str.slice(5).str.head(-1)
    if dtype.is_integer() and source == pl.String():
        return pl.col(name).cast(pl.Float64, strict=False).round(0).cast(dtype, strict=False)
    if dtype.is_integer() and source.is_float():
        return pl.col(name).round(0).cast(dtype, strict=False)
    return pl.col(name).cast(dtype, strict=False)


_FLOAT: Final = pl.Float64()


def _nested(docs: pl.DataFrame, path: tuple[str, ...], dtype: pl.DataType = _FLOAT) -> pl.Expr:
    """A nested value such as ``pump.reservoir``, cast to ``dtype`` (null if absent)."""
    head, *rest = path
    if head not in docs.columns:
        return pl.lit(None, dtype)
    expr, source = pl.col(head), docs.schema[head]
    fields: dict[str, Any]
    for i, name in enumerate(rest):
        if isinstance(source, pl.Struct):
            fields = {f.name: f.dtype for f in source.fields}
            if name not in fields:
                return pl.lit(None, dtype)
            expr, source = expr.struct.field(name), fields[name]
        elif source == pl.String():
            json_path = "$." + ".".join(rest[i:])
            return expr.str.json_path_match(json_path).cast(dtype, strict=False)
        else:
            return pl.lit(None, dtype)
    if source.is_numeric() or source == pl.String():
        return expr.cast(dtype, strict=False)
    return pl.lit(None, dtype)


def _iso_to_utc(docs: pl.DataFrame, name: str) -> pl.Expr:
    if name not in docs.columns:
        return pl.lit(None, _UTC)
    return _utc_text(pl.col(name).cast(pl.String, strict=False))


def _utc_text(text: pl.Expr) -> pl.Expr:
    """ISO-8601 text with any offset (or ``Z``) as a UTC timestamp; null if unparsable.

    The formats are explicit: without one, Polars infers it from the first value and
    raises when it cannot, so a single odd ``created_at`` would fail the whole window.
    Text without an offset is read as UTC.
    """
    return pl.coalesce(
        text.str.to_datetime(_ISO_OFFSET, time_zone="UTC", strict=False, time_unit="us"),
        text.str.to_datetime(_ISO_NAIVE, time_zone="UTC", strict=False, time_unit="us"),
    )


_ISO_OFFSET: Final = "%Y-%m-%dT%H:%M:%S%.f%#z"
_EPOCH_MS_FIRST: Final = 946_684_800_000  # 2000-01-01
_EPOCH_MS_END: Final = 253_402_300_800_000  # 10000-01-01
_ISO_NAIVE: Final = "%Y-%m-%dT%H:%M:%S%.f"


def _epoch_to_utc(docs: pl.DataFrame, name: str) -> pl.Expr:
    if name not in docs.columns:
        return pl.lit(None, _UTC)
    millis = pl.col(name).cast(pl.Float64, strict=False)
    # Epoch ms in the years 2000 to 9999. Earlier is not a CGM reading (seconds sent for
    # milliseconds land in 1970: the next time field is tried instead); a valid later
    # date is a time, placed and then set aside as outside the window, not "unparsable".
    plausible = (millis > _EPOCH_MS_FIRST) & (millis < _EPOCH_MS_END)
    return (
        pl.when(plausible)
        .then(pl.from_epoch((millis * 1000).cast(pl.Int64, strict=False), time_unit="us"))
        .otherwise(None)
        .dt.replace_time_zone("UTC")
    )


def _offset_minutes(docs: pl.DataFrame, name: str) -> pl.Expr:
    """UTC offset in minutes from an ISO string's suffix (``Z`` → 0), else null."""
    if name not in docs.columns:
        return pl.lit(None, pl.Int32)
    text = pl.col(name).cast(pl.String, strict=False)
    parts = text.str.extract_groups(r"([+-])(\d\d):?(\d\d)$")
    sign = pl.when(parts.struct.field("1") == "-").then(-1).otherwise(1)
    minutes = parts.struct.field("2").cast(pl.Int32) * 60 + parts.struct.field("3").cast(pl.Int32)
    return (
        pl.when(text.str.ends_with("Z")).then(0).otherwise(sign * minutes).cast(pl.Int32)
    )


def _first_present(docs: pl.DataFrame, primary: pl.Expr, fallback: pl.Expr) -> pl.Expr:
    """``primary``, and ``fallback`` where it is null.

    The (costly, string-parsing) fallback is skipped for a batch in which ``primary`` is
    null nowhere. That is decided on ``primary``'s values, not on which fields the batch's
    documents carry, so a row's result never depends on its neighbours.
    """
    if docs.select(primary.null_count()).item() == 0:
        return primary
    return pl.coalesce(primary, fallback)


def _local(rows: pl.DataFrame, time_column: str, timezone: str) -> pl.DataFrame:
    """``rows`` with the site's wall-clock time and date (the zone lookup runs once)."""
    local = pl.col(time_column).dt.convert_time_zone(timezone).dt.replace_time_zone(None)
    rows = rows.with_columns(local.alias("local_at"))
    return rows.with_columns(pl.col("local_at").dt.date().alias("local_date"))


def _extra(docs: pl.DataFrame, modelled: frozenset[str], numeric: tuple[str, ...] = ()) -> pl.Expr:
    """Every field the table does not model, as a JSON object string (nulls left out).

    A modelled number that could not be read as one (``"noise": []``, ``"sgv": "HIGH"``)
    is kept too, under ``"_uncast"``, so no value an uploader sent is lost.
    """
    # Sorted, so a record's extra is the same whichever window (and so whichever set of
    # neighbours, which decides the frame's column order) it was fetched in.
    fields = [_Field.of(docs, c) for c in sorted(docs.columns)
              if c not in modelled and c != _ROW and _sent(docs, c)]
    numbers = [_Number(n, plain=_plain_text(docs.get_column(n)))
               for n in numeric if _may_fail_cast(docs, n)]
    rare = [f.name for f in fields if not f.never_null]
    if not (rare or numbers) or sum(docs.get_column(c).count() for c in rare) * 2 > docs.height:
        return _json_object(docs, fields, numbers)
    # Most documents send just the fields every document has, and numbers as numbers: their
    # extra holds those fields alone. The whole object is built for the others only, and
    # written over theirs.
    others = docs.select(pl.any_horizontal(
        *(pl.col(c).is_not_null() for c in rare),
        *(_failed_cast(docs, n.name) for n in numbers))).to_series()
    whole = (docs.select(*(f.name for f in fields), *(n.name for n in numbers)).filter(others)
             .select(_json_object(docs, fields, numbers)).to_series())
    common = _json_object(docs, [f for f in fields if f.never_null], [])
    extra = docs.with_columns(common.alias("__extra")).get_column("__extra")  # one per row
    return pl.lit(extra.scatter(others.arg_true(), whole))


def _sent(docs: pl.DataFrame, name: str) -> bool:
    """Whether any document of the batch has a value for field ``name``."""
    return docs.get_column(name).null_count() < docs.height


_Piece = str | pl.Expr  # literal text, or text that is null where the value is missing


@dataclass(frozen=True)
class _Member:
    """One member of ``extra``, ``"name":<value as JSON>``, as the pieces of text that make
    it: null in a row where the document has no value, unless ``never_null``."""

    pieces: tuple[_Piece, ...]
    never_null: bool = False

    def text(self, before: str = "", after: str = "") -> pl.Expr:
        """The member as one expression, with ``before`` and ``after`` around it."""
        return _concat([before, *self.pieces, after])


def _concat(pieces: list[_Piece], *, ignore_nulls: bool = False) -> pl.Expr:
    """The pieces joined, adjacent literals first: each piece costs a step per row."""
    merged: list[_Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        elif not isinstance(piece, str) or piece:
            merged.append(piece)
    exprs = [pl.lit(p) if isinstance(p, str) else p for p in merged]
    return exprs[0] if len(exprs) == 1 else pl.concat_str(exprs, ignore_nulls=ignore_nulls)


@dataclass(frozen=True)
class _Field:
    """An unmodelled field of a batch, and how its values are written as a member."""

    name: str
    dtype: pl.DataType
    never_null: bool  # every document of the batch has it
    plain: bool  # a number or boolean, or text with nothing to escape: written as it is

    @classmethod
    def of(cls, docs: pl.DataFrame, name: str) -> _Field:
        column = docs.get_column(name)
        plain = (column.dtype.is_integer() or column.dtype == pl.Boolean()
                 or _plain_text(column))
        return cls(name, column.dtype, column.null_count() == 0, plain)

    def member(self) -> _Member:
        """The field as a member of ``extra`` (see ``_member``).

        Integers, booleans and text with nothing to escape are written as they are, the
        same text the JSON encoder writes, without running it.
        """
        key, values = _json_key(self.name), pl.col(self.name)
        if self.plain and self.dtype == pl.String():
            return _Member((key + '"', values, '"'), self.never_null)
        if self.plain:
            return _Member((key, values.cast(pl.String)), self.never_null)
        return _Member((_member(self.name, values, nested=_holds_struct(self.dtype),
                                never_null=self.never_null),), self.never_null)


@dataclass(frozen=True)
class _Number:
    """A modelled number whose documents may send something else (text, a list, ...)."""

    name: str
    plain: bool  # text with nothing to escape: written as it is


def _json_object(docs: pl.DataFrame, fields: list[_Field], numbers: list[_Number]) -> pl.Expr:
    """``{...}`` with the members that are not null, in order, comma-separated; the
    uncast numbers last.

    A member no row lacks anchors the commas: members before it carry a comma after them,
    members after it a comma before them, and the whole object is one concatenation in
    which a member every row has is written straight into the result, not copied into a
    column of its own first.
    """
    members = [f.member() for f in fields]
    uncast = _uncast_member(docs, numbers)
    if uncast is not None:
        members.append(uncast)
    if not members:
        return pl.lit("{}")
    anchor = next((i for i, m in enumerate(members) if m.never_null), None)
    if anchor is None:
        joined = pl.concat_str([m.text() for m in members], separator=",", ignore_nulls=True)
        return pl.format("{{{}}}", joined)
    pieces: list[_Piece] = ["{"]
    for i, member in enumerate(members):
        if i == anchor:
            pieces += member.pieces
        elif i < anchor:
            pieces.append(member.text(after=","))  # nullable: members before the anchor
        elif member.never_null:
            pieces += [",", *member.pieces]
        else:
            pieces.append(member.text(before=","))
    pieces.append("}")
    return _concat(pieces, ignore_nulls=True)


def _plain_text(column: pl.Series) -> bool:
    """Text with nothing for the JSON encoder to escape: written into ``extra`` as it is."""
    return column.dtype == pl.String() and not _needs_escapes(column)


def _needs_escapes(text: pl.Series) -> bool:
    """Whether any value holds a character Polars' JSON encoder escapes: a control
    character, a quote or a backslash.

    Scans the text's bytes a slice of values at a time, several times faster than
    searching each value; in UTF-8 those characters are single bytes no other character
    contains.
    """
    text = text.drop_nulls()  # most of a rare field's rows
    for start in range(0, text.len(), _SCAN_ROWS):
        data = text.slice(start, _SCAN_ROWS).str.join("").cast(pl.Binary).item()
        if data and (np.frombuffer(data, dtype=np.uint8).min() < 0x20
                     or b'"' in data or b"\\" in data):
            return True
    return False


_SCAN_ROWS: Final = 1 << 16


@lru_cache(maxsize=1024)
def _json_key(name: str) -> str:
    """``"name":`` exactly as Polars' JSON encoder writes the member name."""
    encoded = pl.select(pl.struct(pl.lit(0).alias(name)).struct.json_encode()).item()
    return str(encoded)[1:-2]


def _member(name: str, value: pl.Expr, *, nested: bool = False, never_null: bool = False
            ) -> pl.Expr:
    """``"name":<value as JSON>``, or null where the value is null (so it is left out).

    Each member is encoded on its own and the members joined without the nulls: cheaper
    than encoding the whole object and then cutting ``"name":null`` out of the text.
    """
    member = pl.struct(value.alias(name)).struct.json_encode().str.slice(1).str.head(-1)
    if nested:
        member = _drop_null_members(member)  # fields other documents have, null in this one
    return member if never_null else pl.when(value.is_not_null()).then(member)


def _holds_struct(dtype: pl.DataType | DataTypeClass) -> bool:
    if isinstance(dtype, pl.Struct):
        return True
    if isinstance(dtype, (pl.List, pl.Array)):
        return _holds_struct(dtype.inner)
    return False


# A member name in encoded JSON: a quoted string, escapes included. A quote that follows
# ``{`` or ``,`` always opens a member name (inside a string a quote is escaped), so these
# patterns never match inside a value, whatever text the uploader sent.
_NAME: Final = r'"(?:[^"\\]|\\.)*"'
_EMPTY: Final = rf"(?:{_NAME}:null)"


def _drop_null_members(encoded: pl.Expr) -> pl.Expr:
    """Remove ``"name":null`` members from JSON objects nested in ``encoded``."""
    return (
        encoded.str.replace_all(rf"([{{,])(?:{_EMPTY},)+", "${1}")  # followed by a member
        .str.replace_all(rf"(?:,{_EMPTY})+}}", "}")  # the last members of an object
        .str.replace_all(rf"\{{{_EMPTY}}}", "{}")  # the only member
    )


def _may_fail_cast(docs: pl.DataFrame, name: str) -> bool:
    """Whether a document can hold something other than a number in field ``name``: the
    field was sent, and not as a numeric or boolean column."""
    if name not in docs.columns:
        return False
    source = docs.schema[name]
    return not (source.is_numeric() or source == pl.Boolean()) and _sent(docs, name)


def _failed_cast(docs: pl.DataFrame, name: str) -> pl.Expr:
    """True where field ``name`` is present but not a number."""
    return pl.col(name).is_not_null() & _col(docs, name, pl.Float64()).is_null()


def _uncast_member(docs: pl.DataFrame, numbers: list[_Number]) -> _Member | None:
    """``"_uncast":{...}``: each number a document sent that is not one, as its text."""
    if not numbers:
        return None
    texts, members = [], []
    for number in numbers:
        text = pl.when(_failed_cast(docs, number.name)).then(
            _col(docs, number.name, pl.String()))
        key = _json_key(number.name)
        texts.append(text)
        members.append(_concat([key + '"', text, '"']) if number.plain
                       else _member(number.name, text))
    inner = pl.concat_str(members, separator=",", ignore_nulls=True)
    any_failed = pl.any_horizontal(text.is_not_null() for text in texts)
    return _Member((pl.when(any_failed).then(pl.format('"_uncast":{{{}}}', inner)),))


def _payload(docs: pl.DataFrame) -> pl.Expr:
    cols = [c for c in docs.columns if c != _ROW]
    return pl.struct(cols).struct.json_encode() if cols else pl.lit("{}")


def _record_id(docs: pl.DataFrame, synthetic: list[str]) -> pl.Expr:
    """Nightscout's ``_id``; else a readable id from the fields that identify the record."""
    given = _col(docs, "_id", pl.String())
    parts = [_col(docs, c, pl.String()).fill_null("") for c in synthetic]
    return _first_present(docs, given, pl.concat_str([pl.lit("syn"), *parts], separator="|"))


# --------------------------------------------------------------------------- per table


_ENTRY_FIELDS: Final = frozenset(
    {"_id", "type", "date", "dateString", "utcOffset", "device", "sgv", "mbg", "direction",
     "noise", "filtered", "unfiltered", "rssi", "slope", "intercept", "scale"}
)


_ENTRY_NUMBERS: Final = ("sgv", "mbg", "noise", "filtered", "unfiltered", "rssi", "slope",
                         "intercept", "scale", "utcOffset")


def _entries(docs: pl.DataFrame, ctx: ShapeContext) -> list[pl.Expr]:
    sgv = _col(docs, "sgv", pl.Int32())
    entry_type = _col(docs, "type", pl.String()).fill_null("sgv")
    is_sgv = entry_type == "sgv"
    return [
        _record_id(docs, ["device", "date", "type"]).alias("entry_id"),
        entry_type.alias("entry_type"),
        _first_present(docs, _epoch_to_utc(docs, "date"),
                       pl.coalesce(_iso_to_utc(docs, "dateString"), _iso_to_utc(docs, "date")))
        .alias("entry_at"),
        _col(docs, "date", pl.Float64()).cast(pl.Int64, strict=False).alias("entry_epoch_ms"),
        _col(docs, "dateString", pl.String()).alias("date_string"),
        _first_present(
            docs, _col(docs, "utcOffset", pl.Int32()),
            _offset_minutes(docs, "dateString"),
        ).alias("utc_offset_min"),
        _col(docs, "device", pl.String()).alias("device"),
        pl.when(is_sgv).then(sgv).otherwise(None).alias("sgv_mg_dl"),
        _col(docs, "mbg", pl.Int32()).alias("mbg_mg_dl"),
        _col(docs, "direction", pl.String()).alias("direction"),
        _col(docs, "noise", pl.Int32()).alias("noise"),
        _col(docs, "filtered", pl.Float64()).alias("filtered"),
        _col(docs, "unfiltered", pl.Float64()).alias("unfiltered"),
        _col(docs, "rssi", pl.Int32()).alias("rssi"),
        _col(docs, "slope", pl.Float64()).alias("slope"),
        _col(docs, "intercept", pl.Float64()).alias("intercept"),
        _col(docs, "scale", pl.Float64()).alias("scale"),
        (is_sgv & sgv.is_between(1, 38)).fill_null(False).alias("is_error_code"),
        (is_sgv & (sgv == 39)).fill_null(False).alias("is_low"),
        _extra(docs, _ENTRY_FIELDS, _ENTRY_NUMBERS).alias("extra"),
    ]


_TREATMENT_FIELDS: Final = frozenset(
    {"_id", "eventType", "created_at", "insulin", "carbs", "duration", "rate", "absolute",
     "glucose", "glucoseType", "units", "enteredBy", "notes"}
)


_TREATMENT_NUMBERS: Final = ("insulin", "carbs", "duration", "rate", "absolute", "glucose")


def _treatments(docs: pl.DataFrame, ctx: ShapeContext) -> list[pl.Expr]:
    at = pl.coalesce(
        _iso_to_utc(docs, "created_at"), _epoch_to_utc(docs, "date"), _iso_to_utc(docs, "timestamp")
    )
    return [
        _record_id(docs, ["eventType", "created_at", "enteredBy"]).alias("treatment_id"),
        _col(docs, "eventType", pl.String()).fill_null("<none>").alias("event_type"),
        at.alias("treatment_at"),
        _col(docs, "created_at", pl.String()).alias("created_at_raw"),
        _col(docs, "insulin", pl.Float64()).alias("insulin_u"),
        _col(docs, "carbs", pl.Float64()).alias("carbs_g"),
        _col(docs, "duration", pl.Float64()).alias("duration_min"),
        _col(docs, "rate", pl.Float64()).alias("rate_u_per_h"),
        _col(docs, "absolute", pl.Float64()).alias("absolute_u_per_h"),
        _col(docs, "glucose", pl.Float64()).alias("glucose"),
        _col(docs, "glucoseType", pl.String()).alias("glucose_type"),
        _col(docs, "units", pl.String()).alias("units"),
        _col(docs, "enteredBy", pl.String()).alias("entered_by"),
        _col(docs, "notes", pl.String()).alias("notes"),
        _extra(docs, _TREATMENT_FIELDS, _TREATMENT_NUMBERS).alias("extra"),
    ]


_STATUS_PAYLOAD: Final = ("pump", "openaps", "loop", "uploader", "pumpStatus", "xdripjs")
_STATUS_FIELDS: Final = frozenset({"_id", "device", "created_at", *_STATUS_PAYLOAD})


def _devicestatus(docs: pl.DataFrame, ctx: ShapeContext) -> list[pl.Expr]:
    blobs = [c for c in _STATUS_PAYLOAD if c in docs.columns]
    payload = pl.struct(blobs).struct.json_encode() if blobs else pl.lit("{}")
    return [
        _record_id(docs, ["device", "created_at", "date", "mills"]).alias("devicestatus_id"),
        _col(docs, "device", pl.String()).alias("device"),
        pl.coalesce(
            _iso_to_utc(docs, "created_at"),
            _epoch_to_utc(docs, "date"),
            _epoch_to_utc(docs, "mills"),
            _utc_text(_nested(docs, ("openaps", "iob", "timestamp"), pl.String())),
            _utc_text(_nested(docs, ("pump", "clock"), pl.String())),
        ).alias("status_at"),
        _col(docs, "created_at", pl.String()).alias("created_at_raw"),
        pl.coalesce(_nested(docs, ("uploader", "battery")), _nested(docs, ("uploaderBattery",)))
        .alias("uploader_battery_pct"),
        _nested(docs, ("pump", "reservoir")).alias("pump_reservoir_u"),
        pl.coalesce(_nested(docs, ("openaps", "iob", "iob")), _nested(docs, ("loop", "iob", "iob")))
        .alias("iob_u"),
        pl.coalesce(
            _nested(docs, ("openaps", "suggested", "COB")), _nested(docs, ("loop", "cob", "cob"))
        ).alias("cob_g"),
        payload.alias("payload"),
        _extra(docs, _STATUS_FIELDS).alias("extra"),
    ]




_DEDUP_KEYS: Final[dict[str, list[str]]] = {
    "entries": ["device", "entry_at", "entry_type"],
    "treatments": ["event_type", "treatment_at"],
    "devicestatus": ["device", "status_at"],
    "profile": ["valid_from_at", "default_profile"],
}


_DEDUP_REASONS: Final[dict[str, str]] = {
    "entries": "same_device_time",
    "treatments": "same_type_time",
    "devicestatus": "same_device_time",
    "profile": "same_start_time",
}


def shape(table_name: str, docs: pl.DataFrame, ctx: ShapeContext) -> Shaped:
    """Shape one batch of documents for raw table ``table_name``.

    Returns the table's rows (declared columns, deduplicated, inside the window, in time
    then id order), the duplicates removed and the rows that could not be placed, each
    with a reason.
    """
    table = raw_table(table_name)
    if docs.height == 0:
        return Shaped(empty_like(table.polars_schema), empty_like(DUPLICATES_SCHEMA),
                      empty_like(REJECTS_SCHEMA), empty_like(SOURCE_DELETED_SCHEMA))
    # One chunk per column (a client's pages, a file's row groups): gathering rows from
    # chunked columns, as ordering and de-duplicating do, is several times slower.
    docs = docs.rechunk().with_row_index(_ROW)
    # Lazy, so a sub-expression several columns share (a parsed sgv, the entry type) runs once.
    typed = docs.lazy().select(pl.col(_ROW), *_SHAPERS[table.name](docs, ctx),
                               _soft_deleted(docs).alias("__deleted")).collect()
    inside = _inside(table, ctx)
    keys = typed.select(_ROW, table.id_column, *_DEDUP_KEYS[table.name], inside.alias("__in"),
                        "__deleted")
    misplaced = typed[keys.filter(~pl.col("__in")).get_column(_ROW)]
    deleted = keys.filter(pl.col("__in") & pl.col("__deleted")).select(
        pl.col(table.id_column).alias("record_id"), pl.col(table.time_column).alias("event_at"))
    kept, dupes = _deduplicate(keys.filter(pl.col("__in") & ~pl.col("__deleted")), table)
    rows = typed[kept]  # the one copy of the wide frame, in the table's order
    if table.name != "profile":
        rows = _local(rows, table.time_column, ctx.timezone)
    rows = rows.with_columns(_lineage(ctx)).select(table.polars_schema.names())
    rejects = _set_aside(misplaced.with_columns(_misplaced_reason(table, ctx)), docs, table, ctx,
                         schema=REJECTS_SCHEMA)
    duplicates = _set_aside(typed[dupes.get_column(_ROW)].with_columns(dupes.drop(_ROW)), docs,
                            table, ctx, schema=DUPLICATES_SCHEMA)
    return Shaped(rows.cast(table.polars_schema), duplicates, rejects,
                  deleted.cast(SOURCE_DELETED_SCHEMA))


def _soft_deleted(docs: pl.DataFrame) -> pl.Expr:
    """Whether each document is soft-deleted at the source: its ``isValid`` is ``false``.

    Nightscout's API v3 deletes by setting ``isValid: false`` (and ``srvModified``); its v1
    ``find`` still returns such documents. The server tests ``isValid === false``; a batch
    whose ``isValid`` values mix types is read as text, where JSON ``false`` becomes
    ``"false"``, so that text counts too. Anything else (true, 0, missing) is live.
    """
    dtype = docs.schema.get("isValid")
    if dtype == pl.Boolean():
        return pl.col("isValid").eq(False).fill_null(False)
    if dtype == pl.String():
        return pl.col("isValid").eq("false").fill_null(False)
    return pl.lit(False)


def _lineage(ctx: ShapeContext) -> list[pl.Expr]:
    return [
        pl.lit(ctx.site_id).alias("site_id"),
        pl.lit(ctx.run_id).alias("ingest_run_id"),
        pl.lit(ctx.ingested_at).cast(_UTC).alias("ingested_at"),
    ]


def _inside(table: RawTable, ctx: ShapeContext) -> pl.Expr:
    """Whether a row has a time inside the window (profiles: any time at all)."""
    at = pl.col(table.time_column)
    if table.name == "profile":
        return at.is_not_null()
    start, end = pl.lit(ctx.window_start).cast(_UTC), pl.lit(ctx.window_end).cast(_UTC)
    return at.is_not_null() & (at >= start) & (at < end)


def _misplaced_reason(table: RawTable, ctx: ShapeContext) -> pl.Expr:
    at = pl.col(table.time_column)
    return (
        pl.when(at.is_null())
        .then(pl.lit(f"no usable time: {table.time_column} missing, unparsable, or an epoch "
                     "time outside the years 2000-9999"))
        .otherwise(
            pl.lit(f"{table.time_column} ") + at.dt.to_string("%Y-%m-%dT%H:%M:%SZ")
            + pl.lit(" is outside the requested window "
                     f"[{ctx.window_start.isoformat()}, {ctx.window_end.isoformat()})")
        )
        .alias("__reason")
    )


def _deduplicate(keys: pl.DataFrame, table: RawTable) -> tuple[pl.Series, pl.DataFrame]:
    """Drop repeats of the same id, then of the same device + time; say which row was kept.

    ``keys`` holds the placed rows' ``__row``, id and dedup keys, in document order.
    Returns the rows kept (``__row``), in the table's order (time, then id), and the repeats with
    the id of the row kept in their place (``__kept_id``) and why (``__reason``): the
    first document of an id, and then the smallest id of a key, is the one kept.
    """
    rid = pl.col(table.id_column)
    ids, times = keys.get_column(table.id_column), keys.get_column(table.time_column)
    # Positions are sorted, not rows: only the few rows that need it are gathered.
    # Stable, so an id's documents stay in document order and all but the first are
    # repeats. Descending: documents come newest first, and ObjectIds begin with their
    # time, so the ids are nearly in that order already (twice as fast as ascending).
    by_id = keys.select(pl.arg_sort_by(rid, descending=True, maintain_order=True)).to_series()
    repeats = by_id.filter(_same_as_previous(ids.gather(by_id)))
    repeat = pl.repeat(False, keys.height, dtype=pl.Boolean, eager=True).scatter(repeats, True)
    dup_id = keys.filter(repeat).select(_ROW, rid.alias("__kept_id"),
                                        pl.lit("same_id").alias("__reason"))
    # The table's order, without the repeats: the others have distinct ids (never null, a
    # missing _id gets a synthetic one), so they come out as if sorted alone.
    order = keys.select(pl.arg_sort_by(table.time_column, rid)).to_series()
    order = order.filter(~repeat.gather(order))
    # Only rows sharing their time with a neighbour can repeat a key: group just those.
    at = times.gather(order)
    tied_at = (_same_as_previous(at) | at.eq(at.shift(-1)).fill_null(False)).arg_true()
    tied = keys[order.gather(tied_at)].with_columns(tied_at.alias("__at"))
    grouped = tied.with_columns(rid.first().over(_DEDUP_KEYS[table.name]).alias("__kept_id"))
    dup_key = grouped.filter(rid != pl.col("__kept_id"))
    dropped = pl.repeat(False, order.len(), dtype=pl.Boolean, eager=True).scatter(
        dup_key.get_column("__at"), True)
    kept = keys.get_column(_ROW).gather(order.filter(~dropped))
    return kept, pl.concat([dup_id, dup_key.select(
        _ROW, "__kept_id", pl.lit(_DEDUP_REASONS[table.name]).alias("__reason"))])


def _same_as_previous(values: pl.Series) -> pl.Series:
    """True where a value equals the one before it (never for a null)."""
    return values.eq(values.shift(1)).fill_null(False)


def _set_aside(
    rows: pl.DataFrame,
    docs: pl.DataFrame,
    table: RawTable,
    ctx: ShapeContext,
    *,
    schema: pl.Schema,
) -> pl.DataFrame:
    """Rows set aside (rejects or duplicates), with the original document as payload."""
    if rows.height == 0:
        return empty_like(schema)
    originals = docs[rows.get_column(_ROW)]  # __row is the document's position
    rows = rows.with_columns(originals.select(_payload(originals)).to_series().alias("payload"))
    kept = pl.col("__kept_id") if "__kept_id" in rows.columns else None
    return set_aside(rows, table, ctx, reason=pl.col("__reason"), payload=pl.col("payload"),
                     duplicate_of=kept, schema=schema)


def set_aside(
    frame: pl.DataFrame,
    table: RawTable,
    ctx: ShapeContext,
    *,
    reason: pl.Expr,
    payload: pl.Expr,
    duplicate_of: pl.Expr | None = None,
    schema: pl.Schema = REJECTS_SCHEMA,
) -> pl.DataFrame:
    """``frame``'s rows in the audit layout (``audit.rejects`` or ``audit.duplicates``)."""
    out = frame.select(
        pl.lit(table.name).alias("table_name"),
        pl.lit(ctx.site_id).alias("site_id"),
        pl.col(table.id_column).alias("record_id"),
        (duplicate_of if duplicate_of is not None else pl.lit(None, pl.String))
        .alias("duplicate_of"),
        pl.col(table.time_column).alias("event_at"),
        reason.alias("reason"),
        payload.alias("payload"),
        ctx.window_date.alias("window_date"),
        pl.lit(ctx.run_id).alias("ingest_run_id"),
        pl.lit(ctx.ingested_at).cast(_UTC).alias("ingested_at"),
    )
    return out.select(schema.names()).cast(schema)


def unreadable_rejects(docs: Sequence[SetAside], table_name: str, ctx: ShapeContext
                       ) -> pl.DataFrame:
    """Documents the client could not read (too deep, not UTF-8) as rejects, with the reason
    and their text as payload; their time is unknown, so they count on the window's first
    day."""
    if not docs:
        return empty_like(REJECTS_SCHEMA)
    table = raw_table(table_name)
    frame = pl.DataFrame({
        table.id_column: [d.record_id for d in docs],
        table.time_column: pl.Series([None] * len(docs), dtype=_UTC),
        "__reason": [d.reason for d in docs],
        "__payload": [d.payload for d in docs],
    })
    return set_aside(frame, table, ctx, reason=pl.col("__reason"),
                     payload=pl.col("__payload"))


# --------------------------------------------------------------------------- profile


_PROFILE_FIELDS: Final = frozenset(
    {"_id", "startDate", "created_at", "mills", "defaultProfile", "units", "store"}
)


def _profile(docs: pl.DataFrame, ctx: ShapeContext) -> list[pl.Expr]:
    store = _col(docs, "store", pl.String())
    default = _col(docs, "defaultProfile", pl.String()).fill_null("Default")
    picked = pl.struct(store.alias("s"), default.alias("d")).map_elements(
        _pick_default_profile, return_dtype=_PICKED, skip_nulls=False
    )  # a site has a handful of profile documents: a Python step here costs nothing
    return [
        _record_id(docs, ["startDate", "created_at"]).alias("profile_id"),
        pl.coalesce(
            _iso_to_utc(docs, "startDate"), _epoch_to_utc(docs, "mills"),
            _iso_to_utc(docs, "created_at"),
        ).alias("valid_from_at"),
        _col(docs, "created_at", pl.String()).alias("created_at_raw"),
        default.alias("default_profile"),
        picked.struct.field("timezone").alias("timezone"),
        pl.coalesce(_col(docs, "units", pl.String()), picked.struct.field("units")).alias("units"),
        picked.struct.field("dia").alias("dia_h"),
        store.alias("store"),
        _extra(docs, _PROFILE_FIELDS).alias("extra"),
    ]


_PICKED: Final = pl.Struct({"timezone": pl.String(), "units": pl.String(), "dia": pl.Float64()})


def _pick_default_profile(row: dict[str, str | None]) -> dict[str, object]:
    """``store[defaultProfile]``'s timezone, units and DIA (profile names are keys)."""
    try:
        chosen = json.loads(row["s"] or "{}").get(row["d"] or "Default") or {}
    except (ValueError, AttributeError):
        chosen = {}
    if not isinstance(chosen, dict):
        chosen = {}
    try:
        dia = float(chosen["dia"]) if chosen.get("dia") not in (None, "") else None
    except (TypeError, ValueError):
        dia = None
    tz, units = chosen.get("timezone"), chosen.get("units")
    return {"timezone": tz if isinstance(tz, str) else None,
            "units": units if isinstance(units, str) else None, "dia": dia}


def profile_timezone(profiles: pl.DataFrame) -> str | None:
    """Timezone of the most recent profile that names one, else None."""
    if profiles.height == 0 or "timezone" not in profiles.columns:
        return None
    latest = profiles.filter(pl.col("timezone").is_not_null() & (pl.col("timezone") != ""))
    if latest.height == 0:
        return None
    return str(latest.sort("valid_from_at").get_column("timezone")[-1])


_SHAPERS: Final[dict[str, Callable[[pl.DataFrame, ShapeContext], list[pl.Expr]]]] = {
    "entries": _entries,
    "treatments": _treatments,
    "devicestatus": _devicestatus,
    "profile": _profile,
}
