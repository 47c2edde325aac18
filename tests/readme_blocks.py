"""The ```python blocks of README.md, for the tests that run them as written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass(frozen=True)
class Block:
    line: int  # of the first code line in README.md
    code: str

    @property
    def needs_server(self) -> bool:
        """Blocks that talk to a running ragrt server (run by tests/test_serving.py)."""
        return "RagClient(" in self.code

    def run(self, replace: dict[str, str] | None = None) -> dict:
        code = self.code
        for old, new in (replace or {}).items():
            code = code.replace(old, new)
        scope: dict = {"__name__": "__readme__"}
        exec(compile(code, f"README.md:{self.line}", "exec"), scope)
        return scope


def python_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(text[: m.start(1)].count("\n") + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]
