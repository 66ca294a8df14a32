"""Settings: flags over CBR_* environment over defaults, and clear errors for values the server cannot use."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from app.settings import Settings, add_arguments, load_settings, settings_table


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_the_environment_which_overrides_defaults():
    assert load_settings(parse(), {}).s3gen_prompt_tokens == Settings().s3gen_prompt_tokens == 250
    assert load_settings(parse(), {"CBR_S3GEN_PROMPT_TOKENS": "100"}).s3gen_prompt_tokens == 100
    assert load_settings(parse("--s3gen-prompt-tokens", "75"), {"CBR_S3GEN_PROMPT_TOKENS": "100"}
                         ).s3gen_prompt_tokens == 75


@pytest.mark.parametrize("argv, environ, message", [
    (("--s3gen-prompt-tokens", "10"), {}, "s3gen_prompt_tokens must be between 25 and 250"),
    ((), {"CBR_S3GEN_PROMPT_TOKENS": "251"}, "s3gen_prompt_tokens must be between 25 and 250"),
    (("--chunk-size", "300"), {}, "chunk_size must be between 25 and 200"),
    ((), {"CBR_COMPILE_MODE": "fastest"}, "compile_mode must be one of"),  # a flag is refused by argparse itself
    ((), {"CBR_CFM_STEPS": "ten"}, "CBR_CFM_STEPS"),
    (("--ssl-keyfile", "key.pem"), {}, "ssl_keyfile needs ssl_certfile"),
    (("--max-connections", "600"), {}, "max_http_connections must be at least max_connections"),
    ((), {"CBR_HEADER_TIMEOUT_S": "0"}, "header_timeout_s and keep_alive_timeout_s must be positive"),
])
def test_unusable_values_are_refused_with_their_name(argv, environ, message):
    with pytest.raises(ValueError, match=message):
        load_settings(parse(*argv), environ)


def test_the_readme_lists_every_setting_as_the_cli_prints_it():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings_table() in readme
