import logging

from hypothesis import given
from hypothesis import strategies as st

from cdc.infra.redact import RedactingFilter, redact, register_secret, secrets_in

PASSWORD_CHARS = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), max_codepoint=127),
    min_size=4,
    max_size=30,
)


def test_uri_password_is_masked():
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("mongodb+srv://u:p%40ss@cluster0.example.net/?tls=true") == (
        "mongodb+srv://u:***@cluster0.example.net/?tls=true"
    )


def test_keyword_password_is_masked():
    assert redact("host=db password=s3cret user=app") == "host=db password=*** user=app"
    assert redact("host=db password='a b c' user=app") == "host=db password=*** user=app"


def test_text_without_password_is_unchanged():
    text = "postgresql://app@db/x and mongodb://db:27017/?directConnection=true"
    assert redact(text) == text


def test_registered_secret_is_masked_anywhere():
    register_secret("tr0ub4dor&3")
    assert "tr0ub4dor" not in redact('FATAL: role "x" said tr0ub4dor&3 somewhere')


def test_secrets_in_finds_uri_and_keyword_passwords():
    assert secrets_in("postgresql://a:b%21c@h/d") == ["b!c"]
    assert secrets_in("host=h password=zz9") == ["zz9"]
    assert secrets_in("postgresql://a@h/d") == []


@given(PASSWORD_CHARS)
def test_no_password_survives_in_a_uri(password):
    redacted = redact(f"connect to postgresql://user:{password}@127.0.0.1:5/db failed")
    assert redacted == "connect to postgresql://user:***@127.0.0.1:5/db failed"


def test_logging_filter_redacts_rendered_message():
    record = logging.LogRecord("cdc", logging.INFO, __file__, 1, "dsn %s", ("postgresql://u:pw123@h/d",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "dsn postgresql://u:***@h/d"
