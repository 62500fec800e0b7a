"""Render ``test-artifacts/reliability-summary.json`` (written by the fault suite) into docs/RELIABILITY.md.

    python -m ut_video_assets_tests.reliability.report

Replaces what lies between the summary markers; every number comes from the last run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SUMMARY = REPO / "test-artifacts" / "reliability-summary.json"
DOC = REPO / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"


def render(data: dict[str, Any]) -> str:
    scan = data.get("secrets_scan") or {}
    mib = data["bytes_verified"] / 1048576
    lines = [
        f"Last run: {data['generated_at']} ({data['duration_seconds']} s, {data['scenarios']} scenarios).",
        "",
        "| | |",
        "|---|---|",
        f"| faults injected | {data['faults_injected']} |",
        f"| sessions stored and verified | {data['sessions_stored']} |",
        f"| bytes verified (source re-read and hashed) | {data['bytes_verified']:,} ({mib:,.1f} MiB) |",
        f"| failures, each with a stated reason | {data['failures_explained']} of {data['failures']} |",
        f"| leaks (spool files, multipart uploads, objects outside the layout) | {data['leaks']} |",
    ]
    if scan:
        lines.append(
            f"| secrets found | {len(scan.get('hits', []))} (scanned {scan['runs']} runs / {scan['events']} events, "
            f"{scan['dagster_home_files']} files under DAGSTER_HOME, {scan['python_log_lines']} log lines, "
            f"{scan['stored_objects']} objects; {scan['tokens_checked']} issued tokens, the client secret, "
            "the store secret key, X-Amz-Signature/Credential) |"
        )
    lines += ["", "| test | fault | outcome | detail |", "|---|---|---|---|"]
    for entry in data["entries"]:
        if entry["outcome"] == "stored":
            detail = f"{entry['bytes_verified']:,} B verified, {entry.get('bytes_served', 0):,} B served"
            if entry.get("resumes") is not None:
                detail += f", {entry['resumes']} resume(s), {entry.get('url_requests')} URL request(s)"
        else:
            detail = str(entry.get("reason", "")).replace("|", "\\|").replace("\n", " ")[:220]
        lines.append(f"| `{entry['test']}` | {entry['fault']} | {entry['outcome']} | {detail} |")
    return "\n".join(lines)


def main() -> int:
    data = json.loads(SUMMARY.read_text())
    doc = DOC.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest:
        print(f"{DOC} has no {BEGIN} marker", file=sys.stderr)
        return 1
    DOC.write_text(f"{head}{BEGIN}\n{render(data)}\n{END}{tail}")
    print(f"updated {DOC.relative_to(REPO)} from {SUMMARY.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
