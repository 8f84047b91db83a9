"""Open a paper report in headless Chromium and save a screenshot (a check by eye; not run in CI).

    python scripts/screenshot_report.py reports/paper/index.html docs/paper-report.png

Needs Debian's ``chromium`` (``apt-get install chromium``). The flags keep Chromium off the
network (this machine has none) and away from the user's profile.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path, help="the report's index.html")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--size", default="1280,4000", help="window size W,H in pixels")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("screenshot_report: chromium is not installed; apt-get install chromium", file=sys.stderr)
        return 2
    if not args.page.is_file():
        print(f"screenshot_report: no report at {args.page}; run permsym paper first", file=sys.stderr)
        return 2
    args.png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={args.size}",
            f"--screenshot={args.png.resolve()}", args.page.resolve().as_uri(),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0 or not args.png.is_file():
        print(f"screenshot_report: chromium failed ({proc.returncode}): {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return 1
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
