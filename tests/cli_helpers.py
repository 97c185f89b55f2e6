"""What every CLI error test asserts: exit code 1, one `error:` line on stderr, no traceback."""

from __future__ import annotations


def one_line_error(result, *fragments: str) -> str:
    """Assert a CliRunner result failed with one error line holding every fragment; return that line."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
