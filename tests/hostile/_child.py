"""Run one hostile case (by name) and print its outcome as the last line of stdout:
``HOSTILE-RESULT {"outcome": "ok" | "raised", "types": [exception MRO names], "message": ...}``.
The parent (test_hostile.py) runs this under a time and memory limit."""

from __future__ import annotations

import json
import sys
import traceback

import cases


def main() -> int:
    name = sys.argv[1]
    fn = cases.CASES[name].fn
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 (reported to the parent, which judges it)
        out = {"outcome": "raised", "types": [c.__name__ for c in type(e).__mro__], "message": str(e)[:2000],
               "traceback": traceback.format_exc()[-3000:]}
    else:
        out = {"outcome": "ok"}
    sys.stdout.flush()
    print("HOSTILE-RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
