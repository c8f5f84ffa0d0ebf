"""Shared by the CLI tests: run ``cmdr`` in this process and check that a user error is one line."""
from cmdr_ros.cli.main import main


def one_line_error(capsys, argv) -> str:
    """Run ``cmdr ARGV``: it must exit 2 with exactly one line ``cmdr: error: ...`` and no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmdr: error:"), err
    assert "Traceback" not in err
    return lines[0]
