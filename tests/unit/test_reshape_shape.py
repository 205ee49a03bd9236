"""What a migration changed, read from two ``cdc.table_shape`` texts (no server)."""

from cdc.capture.reshape import Shape, _describe_change

BEFORE = 'item_id integer\n1 item_id integer\n2 name text\n3 "odd ""name""" numeric(6,2)\n4 note text'


def test_a_shape_names_its_columns_by_number_quoted_names_included():
    shape = Shape.parse(BEFORE)
    assert shape.key == "item_id integer"
    assert shape.name_of(3) == 'odd "name"'
    assert shape.number_of('odd "name"') == 3
    assert shape.name_of(9) is None and shape.number_of("missing") is None


def test_a_change_is_described_in_a_few_words():
    after = 'id integer\n1 id integer\n2 name text\n3 "odd ""name""" numeric(8,2)\n5 color text'
    words = _describe_change(Shape.parse(BEFORE), Shape.parse(after))
    assert words == (
        'key (item_id integer) became (id integer), renamed item_id to id, retyped odd "name", added color,'
        " dropped note"
    )


def test_an_unchanged_shape_with_another_text_still_says_something():
    assert _describe_change(Shape.parse(BEFORE), Shape.parse(BEFORE)) == "changed shape"
