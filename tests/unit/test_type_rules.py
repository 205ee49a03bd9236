"""The two rule tables of the type mapping, without a database: the encoder's (``cdc.encode.types``) and
verify's (``cdc.verify.rules``) name the same types, and pgvector's ``vector`` is found in any schema."""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from types import SimpleNamespace

from bson import json_util
from psycopg import sql

from cdc.capture.tables import Column
from cdc.encode import types, values
from cdc.encode.codec import RowEncoder
from cdc.encode.types import converter, select_expression
from cdc.verify import rules
from tests.unit.test_codec import check_line, same


def float4(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def sql_text(column: Column) -> str:
    return select_expression(column, sql.Identifier("c")).as_string(None)


def verify_rule(column: Column) -> rules.ColumnRule:
    [rule] = rules.rules_for(SimpleNamespace(columns=(column,)))
    return rule


def verify_sql(column: Column) -> str:
    return rules.read_expression(verify_rule(column), sql.Identifier("c")).as_string(None)


VECTOR = Column("c", "vector", False, "U")


# ---- one row per type on each side ------------------------------------------------------------------


def test_every_type_verify_knows_is_a_type_the_encoder_knows():
    assert set(rules.TYPES) <= set(types.TYPES)


def test_every_type_the_encoder_does_not_write_as_text_has_a_verify_rule():
    """A type added to the encoder's table with its own mapping needs its row in verify's too."""
    own = {name for name, rule in types.TYPES.items() if rule is not types.AS_TEXT}
    assert own - set(rules.TYPES) == {"name", '"char"', "inet"}  # verify reads these as output text anyway


def test_types_outside_the_tables_are_their_text_on_both_sides():
    hstore = Column("c", "hstore", False, "U")
    assert types.rule_for(hstore) is types.AS_TEXT
    assert sql_text(hstore) == '"c"::text'
    assert verify_rule(hstore).each is rules.OUTPUT_TEXT


def test_enums_are_text_whatever_their_name():
    enum = Column("c", "vector", False, "E")
    assert types.rule_for(enum) is types.AS_TEXT
    assert verify_rule(enum).each is rules.OUTPUT_TEXT


# ---- pgvector's vector ----------------------------------------------------------------------------


def test_vector_is_read_through_its_cast_to_real_array():
    assert sql_text(VECTOR) == '"c"::real[]'
    assert sql_text(Column("c", "vector", True, "U")) == '"c"::text[]'  # an array of vectors: their text
    assert verify_sql(VECTOR) == '"c"::real[]::double precision[]'
    assert verify_sql(Column("c", "vector", True, "U")) == '"c"::text::text[]'


def test_vector_in_another_schema_is_found_qualified():
    for name in ("extensions.vector", '"My Schema".vector', '"a.b".vector'):
        column = Column("c", name, False, "U")
        assert types.rule_for(column) is types.TYPES["vector"], name
        assert verify_rule(column).each is rules.TYPES["vector"], name


def test_another_type_called_vector_is_text():
    for column in (
        Column("c", "vector", False, "C"),  # a composite type of that name
        Column("c", "geo.vector", False, "C"),
        Column("c", '"x.vector"', False, "U"),  # a quoted name that merely ends in vector
        Column("c", 'x."a.vector"', False, "U"),
    ):
        assert types.rule_for(column) is types.AS_TEXT, column
        assert verify_rule(column).each is rules.OUTPUT_TEXT, column


def test_only_extension_types_are_matched_in_another_schema():
    # a user's type called uuid, in a schema: format_type qualifies it (pg_catalog's comes first)
    assert types.rule_for(Column("c", "public.uuid", False, "U")) is types.AS_TEXT
    assert verify_rule(Column("c", "public.uuid", False, "U")).each is rules.OUTPUT_TEXT


def test_vector_elements_are_written_as_exact_doubles():
    fetched = [float4(0.1), -0.0, float4(3.4028235e38), float4(1e-45), 1.0]
    line = RowEncoder([Column("id", "integer"), VECTOR], ["id"]).upsert_line([1], [1, fetched], 3)
    document = check_line(line)
    assert same(document["c"], fetched)
    assert [struct.pack(">d", value) for value in document["c"]] == [struct.pack(">d", value) for value in fetched]
    assert check_line(RowEncoder([Column("id", "integer"), VECTOR], ["id"]).upsert_line([1], [1, None], 3))["c"] is None


def test_a_non_finite_vector_element_would_not_reach_orjson_as_nan():
    # pgvector refuses them; the converter writes them as any double should one come
    written = converter(VECTOR)([1.0, math.nan, -math.inf])
    assert written == [1.0, {"$numberDouble": "NaN"}, {"$numberDouble": "-Infinity"}]
    assert converter(VECTOR)([0.5]) == [0.5]


def test_an_array_of_vectors_is_an_array_of_their_text():
    column = Column("c", "vector", True, "U")
    assert converter(column) is values.as_fetched
    line = RowEncoder([Column("id", "integer"), column], ["id"]).upsert_line([1], [1, ["[1,2]", None]], 3)
    assert json_util.loads(line)["c"] == ["[1,2]", None]


def test_verify_expects_the_vector_as_doubles():
    rule = verify_rule(VECTOR)
    read = [float4(0.1), -0.0, 2.0]  # float8[] as psycopg's text loader returns it
    assert same(rules.expected_value(rule, read), read)
    assert rules.expected_value(rule, None) is None
    # the mapped documents' path: to_json of the float8[] with numbers as Decimal ("-0" kept as Decimal)
    rendered = [Decimal("0.10000000149011612"), Decimal("-0"), 2]
    assert same(rules.expected_value(rule, rules.from_json(rule, rendered)), read)
    array = verify_rule(Column("c", "vector", True, "U"))
    assert rules.expected_value(array, rules.from_json(array, ["[1,2]", None])) == ["[1,2]", None]
