"""What every benchmark does with its Markdown report: print it, and write it to ``--out`` when one is given."""
from __future__ import annotations


def publish(text: str, out: str | None, title: str = "") -> None:
    """Print ``text``; with ``out``, write it there (under ``# title`` when given), ending in one newline."""
    print(text)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write((f"# {title}\n\n" if title else "") + text.rstrip("\n") + "\n")
