"""Server logs: one line per event, as JSON (llama.cpp's default) or text; off with --log-disable."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"timestamp": int(time.time()), "level": record.levelname, "function": record.funcName,
               "line": record.lineno, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{time.strftime('%H:%M:%S')} {record.levelname[0]} {record.getMessage()}" + (f" {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(fmt: str = "json", disable: bool = False, verbose: bool = False) -> logging.Logger:
    log = logging.getLogger("rllama.server")
    log.handlers.clear()
    log.propagate = False
    if disable:
        log.addHandler(logging.NullHandler())
        log.setLevel(logging.CRITICAL + 1)
        return log
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    return log
