"""Fixtures shared by the command-line tests (examples, sweep, align): tiny model pairs saved to disk; and an empty
bild cache for every test.

Module-scoped: each test module gets its own folder and pairs, built once for all its tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _example_fixtures import save_pair


@pytest.fixture(autouse=True)
def _own_bild_cache(monkeypatch, tmp_path_factory):
    """Every test gets an empty bild cache: a cost model saved by `bild calibrate` on the machine running the tests
    must never decide a test's drafting (tests that need $BILD_CACHE set their own)."""
    monkeypatch.setenv("BILD_CACHE", str(tmp_path_factory.getbasetemp() / "bild-cache"))
    monkeypatch.delenv("BILD_COSTS", raising=False)


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
