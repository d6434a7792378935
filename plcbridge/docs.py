"""Generate the tables of docs/plc-interface.md from the signal contract.

The prose of the document is written by hand; the part between the markers below is
generated from `plcbridge.contract`, so the docs cannot drift from the code
(`plcbridge docs --check` and a test compare them).
"""

from __future__ import annotations

from pathlib import Path

from plcbridge.contract import markdown_tables

BEGIN = "<!-- BEGIN GENERATED FROM plcbridge/contract.py: edit the contract, then run `plcbridge docs` -->"
END = "<!-- END GENERATED -->"
DEFAULT_PATH = Path("docs/plc-interface.md")


def render_interface_doc(path: Path = DEFAULT_PATH) -> str:
    text = path.read_text()
    try:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"{path}: the generated-section markers are missing") from None
    return f"{head}{BEGIN}\n\n{markdown_tables()}\n{END}{tail}"
