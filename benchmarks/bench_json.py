"""The JSON end of a benchmark script: one line on stdout for whatever reads the output, and the
same report, indented, in the file `--json` named."""

import json


def emit(report: dict, path: str | None = None) -> None:
    print(json.dumps(report))
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
