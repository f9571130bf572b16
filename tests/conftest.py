"""Fixtures shared by the command-line tests (examples, sweep, align): tiny model pairs saved to disk.

Module-scoped: each test module gets its own folder and pairs, built once for all its tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _example_fixtures import save_pair


@pytest.fixture(scope="module")
def folder(request, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))


@pytest.fixture(scope="module")
def decoder_pair(folder) -> tuple[str, str]:
    """(small, large) folders of a decoder-only pair with a chat-template tokenizer."""
    return save_pair(folder, "decoder")


@pytest.fixture(scope="module")
def seq2seq_pair(folder) -> tuple[str, str]:
    """(small, large) folders of an encoder-decoder pair."""
    return save_pair(folder, "seq2seq")
