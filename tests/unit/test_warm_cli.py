"""`tests.warm_cli`: a command forked from the warm interpreter is a process of its own, titled as itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import warm_cli


def test_a_forked_command_has_its_own_pid_argv_and_title(tmp_path: Path):
    script = tmp_path / "who.py"
    script.write_text(
        "import os, sys\n"
        "print(os.getpid(), sys.argv[1:], os.environ['WHO'])\n"
        "print(open('/proc/self/cmdline', 'rb').read().replace(b'\\0', b' ').decode().strip())\n"
        "sys.exit(3)\n"
    )

    proc = warm_cli.run(
        [sys.executable, str(script), "--date", "2026-11-27"], env={"WHO": "forked"}, cwd=tmp_path, timeout=120
    )

    assert proc.returncode == 3, proc.stderr
    ids, title = proc.stdout.splitlines()
    pid, rest = ids.split(" ", 1)
    assert int(pid) != os.getpid() and rest == "['--date', '2026-11-27'] forked"
    # `ps` and `make test-profile` see the command, not the forkserver's command line.
    assert title == f"{sys.executable} {script} --date 2026-11-27"
