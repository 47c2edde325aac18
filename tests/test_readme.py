"""Every ```python block of README.md runs as written: the engine and index blocks here, against
the fixture model and index under the names the README uses (``art/``, ``index/``); the client
blocks against the real tritonserver in tests/test_serving.py."""

from __future__ import annotations

import pytest

from tests.readme_blocks import python_blocks

BLOCKS = python_blocks()
LOCAL = [b for b in BLOCKS if not b.needs_server]


def test_the_readme_has_python_blocks_of_both_kinds():
    assert LOCAL and len(LOCAL) < len(BLOCKS)


@pytest.mark.parametrize("block", LOCAL, ids=[f"README.md:{b.line}" for b in LOCAL])
def test_readme_block_runs(block, rag_bart_art, rag_bart_index, tmp_path, monkeypatch, capsys):
    (tmp_path / "art").symlink_to(rag_bart_art, target_is_directory=True)
    (tmp_path / "index").symlink_to(rag_bart_index, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    block.run()
    assert capsys.readouterr().out  # every block shows something
