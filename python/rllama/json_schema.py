"""JSON Schema -> GBNF grammar, so generation can be constrained to JSON matching a schema.

Supported: ``type`` (one or a list), ``properties`` / ``required`` / ``additionalProperties``
(properties are emitted in schema order, required ones always, optional ones optionally; without
``additionalProperties`` an object with ``properties`` gets no other keys), ``items`` /
``prefixItems`` (and the old array form of ``items``), ``minItems`` / ``maxItems``, ``enum``,
``const``, ``anyOf`` / ``oneOf`` (alternatives), ``allOf`` (merged), local ``$ref`` into
``$defs`` / ``definitions`` (recursion allowed), string ``format`` date, time, date-time and uuid
(other formats are annotations: plain strings), ``minLength`` / ``maxLength``, ``pattern`` (the
regex subset below), integer ``minimum`` / ``maximum`` / ``exclusiveMinimum`` /
``exclusiveMaximum`` (any bounds), the same for numbers when the bounds are integers (bounded
numbers are written without exponent). ``{}`` (or ``true``) means any JSON value.
Annotations (title, description, examples, default, $schema, $id, $comment, ...) are ignored.
Any other keyword is an ``InvalidRequestError`` that names it.

Pattern subset: anchors ``^`` and ``$`` (the whole string must match either way), literals,
``.``, escapes ``\\d \\D \\w \\W \\s \\S`` and escaped punctuation, ``\\n \\t \\r \\uXXXX``, classes
``[...]`` with ranges and ``^``, groups ``(...)`` and ``(?:...)``, ``|``, and the quantifiers
``* + ? {m} {m,} {m,n}`` (greedy or lazy). Back-references, look-around and word boundaries
are rejected.

Counts (lengths, items) above 2000 are rejected: the grammar engine caps repetitions there.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from rllama.errors import InvalidRequestError

__all__ = ["SchemaConverter", "schema_to_grammar"]

MAX_COUNT = 2000

SPACE_RULE = '| " " | "\\n" [ \\t]{0,20}'

PRIMITIVES: dict[str, tuple[str, list[str]]] = {
    "boolean": ('("true" | "false") space', []),
    "null": ('"null" space', []),
    "integral-part": ('[0] | [1-9] [0-9]{0,15}', []),
    "decimal-part": ("[0-9]{1,16}", []),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space',
               ["integral-part", "decimal-part"]),
    "integer": ('("-"? integral-part) space', ["integral-part"]),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})', []),
    "string": ('"\\"" char* "\\"" space', ["char"]),
    "value": ("object | array | string | number | boolean | null",
              ["object", "array", "string", "number", "boolean", "null"]),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
               ["string", "value"]),
    "array": ('"[" space ( value ("," space value)* )? "]" space', ["value"]),
    "uuid": (('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
              '[0-9a-fA-F]{12} "\\"" space'), []),
    # Every calendar-valid date except 29 February (no leap-year arithmetic in a grammar).
    "date": (('[0-9]{4} "-" ( ("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) | '
              '("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30") | '
              '"02" "-" ("0" [1-9] | "1" [0-9] | "2" [0-8]) )'), []),
    "time": (('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? '
              '( "Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] )'), []),
    "date-time": ('date "T" time', ["date", "time"]),
    "date-string": ('"\\"" date "\\"" space', ["date"]),
    "time-string": ('"\\"" time "\\"" space', ["time"]),
    "date-time-string": ('"\\"" date-time "\\"" space', ["date-time"]),
}

FORMAT_RULES = {"date": "date-string", "time": "time-string", "date-time": "date-time-string", "uuid": "uuid"}

ANNOTATIONS = {
    "title", "description", "examples", "default", "$schema", "$id", "$comment", "readOnly", "writeOnly",
    "deprecated", "$defs", "definitions", "format", "contentMediaType", "contentEncoding", "strict", "name",
}

KEYWORDS_BY_TYPE = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "additionalItems", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
}
GENERIC = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}
ALL_KNOWN = GENERIC | ANNOTATIONS | set().union(*KEYWORDS_BY_TYPE.values())


def _unsupported(keyword: str, detail: str = "") -> InvalidRequestError:
    msg = f'Unsupported JSON Schema keyword "{keyword}"'
    return InvalidRequestError(msg + (f": {detail}" if detail else ""))


def _literal(s: str) -> str:
    """A GBNF string literal matching `s` exactly."""
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _class_char(cp: int) -> str:
    """One code point inside a GBNF character class."""
    ch = chr(cp)
    if ch in "\\]-[^\"":
        return "\\" + ch
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02X}"
    if cp > 0xFFFF:
        return f"\\U{cp:08X}"
    if 0xD800 <= cp <= 0xDFFF:
        return f"\\u{cp:04X}"
    return ch


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class SchemaConverter:
    def __init__(self, root_schema: Any):
        # "root" is reserved (filled in last) so no generated rule can take the name.
        self.rules: dict[str, str] = {"root": "", "space": SPACE_RULE}
        self._bodies: dict[str, str] = {}
        self._root = root_schema
        self._refs: dict[str, str] = {}
        self._depth = 0

    # -- rules ---------------------------------------------------------------------------------
    def _add(self, name: str, body: str) -> str:
        if body in self._bodies:
            return self._bodies[body]
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-") or "r"
        key = base
        i = 0
        while key in self.rules and self.rules[key] != body:
            i += 1
            key = f"{base}-{i}"
        self.rules[key] = body
        self._bodies[body] = key
        return key

    def _primitive(self, name: str) -> str:
        if name not in self.rules:
            body, deps = PRIMITIVES[name]
            self.rules[name] = body
            for dep in deps:
                self._primitive(dep)
        return name

    def grammar(self) -> str:
        return "".join(f"{k} ::= {v}\n" for k, v in self.rules.items())

    # -- visiting ------------------------------------------------------------------------------
    def visit(self, schema: Any, name: str) -> str:
        """Return a rule name matching JSON text valid under `schema` (followed by space)."""
        self._depth += 1
        if self._depth > 100:
            raise InvalidRequestError("JSON schema nested too deeply")
        try:
            return self._visit(schema, name)
        finally:
            self._depth -= 1

    def _visit(self, schema: Any, name: str) -> str:
        if schema is True or (isinstance(schema, Mapping) and not (set(schema) - ANNOTATIONS)):
            return self._primitive("value")
        if schema is False:
            raise _unsupported("false", "a schema that matches nothing")
        if not isinstance(schema, Mapping):
            raise InvalidRequestError("JSON schema must be an object or a boolean")
        unknown = [k for k in schema if k not in ALL_KNOWN]
        if unknown:
            raise _unsupported(unknown[0])
        if "$ref" in schema:
            return self._ref(schema["$ref"], schema)
        if "allOf" in schema:
            return self.visit(self._merge_all_of(schema), name)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = schema[key]
                if not isinstance(subs, list) or not subs:
                    raise InvalidRequestError(f'"{key}" must be a non-empty array')
                rest = {k: v for k, v in schema.items() if k != key}
                alts = [self.visit(self._combine(rest, s), f"{name}-{i}") for i, s in enumerate(subs)]
                return self._add(name, " | ".join(alts))
        if "const" in schema:
            return self._add(name, _literal(_json_text(schema["const"])) + " space")
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise InvalidRequestError('"enum" must be a non-empty array')
            return self._add(name, "(" + " | ".join(_literal(_json_text(v)) for v in values) + ") space")
        t = schema.get("type")
        if isinstance(t, list):
            if not t:
                raise InvalidRequestError('"type" must not be an empty array')
            alts = []
            for one in t:
                keep = KEYWORDS_BY_TYPE.get(one, set()) | GENERIC | ANNOTATIONS
                sub = {k: v for k, v in schema.items() if k in keep}
                sub["type"] = one
                alts.append(self.visit(sub, f"{name}-{one}"))
            return self._add(name, " | ".join(alts))
        if t is None:
            t = self._infer_type(schema)
            if t is None:
                return self._primitive("value")
        if t not in ("object", "array", "string", "integer", "number", "boolean", "null"):
            raise InvalidRequestError(f'Unsupported JSON Schema type "{t}"')
        for k in schema:
            if k in GENERIC or k in ANNOTATIONS:
                continue
            if k not in KEYWORDS_BY_TYPE.get(t, set()):
                raise _unsupported(k, f'not applicable to type "{t}"')
        if t == "object":
            return self._object(schema, name)
        if t == "array":
            return self._array(schema, name)
        if t == "string":
            return self._string(schema, name)
        if t == "integer":
            return self._integer(schema, name)
        if t == "number":
            return self._number(schema, name)
        return self._primitive(t)

    @staticmethod
    def _infer_type(schema: Mapping[str, Any]) -> str | None:
        for t, keys in KEYWORDS_BY_TYPE.items():
            if t == "number":
                continue
            if any(k in schema for k in keys):
                return t
        return None

    @staticmethod
    def _combine(base: Mapping[str, Any], sub: Any) -> Any:
        base = {k: v for k, v in base.items() if k not in ANNOTATIONS}
        if not base:
            return sub
        if sub is True:
            return dict(base)
        if not isinstance(sub, Mapping):
            return sub
        return {"allOf": [dict(base), dict(sub)]}

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _unsupported("$ref", f"only local references (#/...) are supported, got {ref!r}")
        node: Any = self._root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise InvalidRequestError(f"Unresolvable $ref: {ref}")
        return node

    def _ref(self, ref: Any, schema: Mapping[str, Any]) -> str:
        others = {k: v for k, v in schema.items() if k != "$ref" and k not in ANNOTATIONS}
        if others:
            return self.visit({"allOf": [{"$ref": ref}, others]}, "ref")
        if ref in self._refs:
            return self._refs[ref]
        target = self._resolve(ref)
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", ref.split("/")[-1] or "root").strip("-") or "ref"
        key = f"ref-{base}"
        i = 0
        while key in self.rules:
            i += 1
            key = f"ref-{base}-{i}"
        self._refs[ref] = key
        self.rules[key] = "space"  # placeholder; allows recursive references
        body_rule = self.visit(target, f"{key}-body")
        self.rules[key] = body_rule
        return key

    def _merge_all_of(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        subs = schema["allOf"]
        if not isinstance(subs, list) or not subs:
            raise InvalidRequestError('"allOf" must be a non-empty array')
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        parts = []
        for s in subs:
            seen = set()
            while isinstance(s, Mapping) and "$ref" in s and len([k for k in s if k not in ANNOTATIONS]) == 1:
                if s["$ref"] in seen:
                    raise InvalidRequestError("circular $ref in allOf")
                seen.add(s["$ref"])
                s = self._resolve(s["$ref"])
            if s is True:
                continue
            if not isinstance(s, Mapping):
                raise _unsupported("allOf", "subschemas must be objects")
            if "allOf" in s:
                s = self._merge_all_of(s)
            parts.append(s)
        for s in parts:
            for k, v in s.items():
                if k == "properties":
                    props = dict(merged.get("properties", {}))
                    props.update(v)
                    merged["properties"] = props
                elif k == "required":
                    merged["required"] = list(dict.fromkeys(list(merged.get("required", [])) + list(v)))
                elif k in ("anyOf", "oneOf", "$ref") and k in merged:
                    raise _unsupported("allOf", f'combining several "{k}" is not supported')
                elif k in ("minimum", "exclusiveMinimum", "minLength", "minItems") and k in merged:
                    merged[k] = max(merged[k], v)
                elif k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems") and k in merged:
                    merged[k] = min(merged[k], v)
                elif k == "type" and "type" in merged and merged["type"] != v:
                    a = merged["type"] if isinstance(merged["type"], list) else [merged["type"]]
                    b = v if isinstance(v, list) else [v]
                    both = [x for x in a if x in b]
                    if "number" in a and "integer" in b or "integer" in a and "number" in b:
                        both.append("integer")
                    if not both:
                        raise _unsupported("allOf", "the subschemas' types do not intersect")
                    merged["type"] = both[0] if len(both) == 1 else both
                else:
                    merged[k] = v
        if "anyOf" in merged or "oneOf" in merged:
            key = "anyOf" if "anyOf" in merged else "oneOf"
            rest = {k: v for k, v in merged.items() if k != key}
            return {key: [self._combine(rest, s) if rest else s for s in merged[key]]}
        return merged

    # -- objects -------------------------------------------------------------------------------
    def _object(self, schema: Mapping[str, Any], name: str) -> str:
        props = schema.get("properties")
        additional = schema.get("additionalProperties", None if props else True)
        if props is None:
            props = {}
        if not isinstance(props, Mapping):
            raise InvalidRequestError('"properties" must be an object')
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise InvalidRequestError('"required" must be an array of strings')
        missing = [r for r in required if r not in props]
        if missing:
            raise InvalidRequestError(f'Required property "{missing[0]}" is not in "properties"')
        if not props and additional is True:
            return self._primitive("object")
        self._primitive("string")
        kv: dict[str, str] = {}
        for pname, pschema in props.items():
            value = self.visit(pschema, f"{name}-{pname}")
            kv[pname] = self._add(f"{name}-{pname}-kv", f'{_literal(_json_text(pname))} space ":" space {value}')
        req = [p for p in props if p in required]
        opt = [p for p in props if p not in required]
        extra = None
        if additional not in (None, False):
            value = self.visit(additional if additional is not True else {}, f"{name}-additional-value")
            key_rule = self._not_keys(list(props), f"{name}-additional-key")
            extra = self._add(f"{name}-additional-kv", f'{key_rule} ":" space {value}')
        # Required properties in order, then each optional one maybe, then extra ones.
        items = [kv[p] for p in req]
        tail_parts = [kv[p] for p in opt]
        if extra:
            tail_parts.append(extra)

        def seq_after_first(i: int) -> str:
            """Optional items i.. when something precedes them (each with a leading comma)."""
            parts = []
            for j in range(i, len(tail_parts)):
                if extra and j == len(tail_parts) - 1:
                    parts.append(f'("," space {tail_parts[j]})*')
                else:
                    parts.append(f'("," space {tail_parts[j]})?')
            return " ".join(parts)

        if items:
            body = " \",\" space ".join(items)
            tail = seq_after_first(0)
            inner = body + (" " + tail if tail else "")
        elif tail_parts:
            alts = []
            for i in range(len(tail_parts)):
                rest = seq_after_first(i + 1)
                if extra and i == len(tail_parts) - 1:
                    alts.append(f'{tail_parts[i]} ("," space {tail_parts[i]})*')
                else:
                    alts.append(tail_parts[i] + (" " + rest if rest else ""))
            inner = "(" + " | ".join(alts) + ")?"
        else:
            inner = ""
        return self._add(name, f'"{{" space {inner} "}}" space')

    def _not_keys(self, names: list[str], rule: str) -> str:
        """A JSON string (unescaped characters only) that is none of `names`."""
        self._primitive("string")
        if not names:
            return self._add(rule, '"\\"" [^"\\\\\\x7F\\x00-\\x1F]* "\\"" space')
        plain = self._add("plain-char", '[^"\\\\\\x7F\\x00-\\x1F]')
        trie: dict[str, Any] = {}
        for n in names:
            node = trie
            for ch in n:
                node = node.setdefault(ch, {})
            node[""] = {}

        def build(node: dict[str, Any]) -> str:
            alts = []
            chars = [c for c in node if c]
            excluded = "".join(_class_char(ord(c)) for c in chars)
            alts.append(f'[^"\\\\\\x7F\\x00-\\x1F{excluded}] {plain}*')
            for c in chars:
                alts.append(f"{_literal(c)} ({build(node[c])})")
            if "" not in node:
                alts.append('""')
            return " | ".join(alts)

        body = build(trie)
        return self._add(rule, f'"\\"" ({body}) "\\"" space')

    # -- arrays --------------------------------------------------------------------------------
    def _count(self, schema: Mapping[str, Any], key: str) -> int | None:
        v = schema.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidRequestError(f'"{key}" must be a non-negative integer')
        if v > MAX_COUNT:
            raise _unsupported(key, f"values above {MAX_COUNT} are not supported")
        return v

    def _array(self, schema: Mapping[str, Any], name: str) -> str:
        items = schema.get("items")
        prefix = schema.get("prefixItems")
        if isinstance(items, list):
            prefix, items = items, schema.get("additionalItems", False)
        lo = self._count(schema, "minItems") or 0
        hi = self._count(schema, "maxItems")
        if prefix is not None:
            if not isinstance(prefix, list):
                raise InvalidRequestError('"prefixItems" must be an array')
            rules = [self.visit(s, f"{name}-{i}") for i, s in enumerate(prefix)]
            if items not in (None, False):
                raise _unsupported("items", "together with prefixItems")
            if lo > len(rules) or (hi is not None and hi < len(rules)):
                raise _unsupported("minItems", "bounds incompatible with prefixItems")
            body = ' "," space '.join(rules)
            return self._add(name, f'"[" space {body} "]" space')
        item = self.visit(items if items is not None else True, f"{name}-item")
        if hi is not None and hi < lo:
            raise InvalidRequestError('"maxItems" is smaller than "minItems"')
        if hi == 0:
            return self._add(name, '"[" space "]" space')
        rest_lo = max(lo - 1, 0)
        rest = f'("," space {item})' + (f"{{{rest_lo},{hi - 1}}}" if hi is not None else f"{{{rest_lo},}}")
        if rest_lo == 0 and hi is None:
            rest = f'("," space {item})*'
        inner = f"{item} {rest}"
        if lo == 0:
            inner = f"({inner})?"
        return self._add(name, f'"[" space {inner} "]" space')

    # -- strings -------------------------------------------------------------------------------
    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        fmt = schema.get("format")
        lo = self._count(schema, "minLength")
        hi = self._count(schema, "maxLength")
        if "pattern" in schema:
            if lo is not None or hi is not None:
                raise _unsupported("pattern", "together with minLength/maxLength")
            pat = schema["pattern"]
            if not isinstance(pat, str):
                raise InvalidRequestError('"pattern" must be a string')
            body = RegexToGrammar(pat).convert()
            return self._add(name, f'"\\"" ({body}) "\\"" space')
        if fmt in FORMAT_RULES and lo is None and hi is None:
            return self._primitive(FORMAT_RULES[fmt])
        if lo is None and hi is None:
            return self._primitive("string")
        char = self._primitive("char")
        lo = lo or 0
        if hi is not None and hi < lo:
            raise InvalidRequestError('"maxLength" is smaller than "minLength"')
        rep = f"{{{lo},{hi}}}" if hi is not None else f"{{{lo},}}"
        return self._add(name, f'"\\"" {char}{rep} "\\"" space')

    # -- numbers -------------------------------------------------------------------------------
    @staticmethod
    def _bound(schema: Mapping[str, Any], key: str) -> float | None:
        v = schema.get(key)
        if v is None or v is False:
            return None
        if v is True:  # draft 4 boolean exclusive flags
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            raise InvalidRequestError(f'"{key}" must be a number')
        if isinstance(v, float) and math.isinf(v):
            raise InvalidRequestError(f'"{key}" must be a finite number')
        if abs(v) >= 10**MAX_BOUND_DIGITS:
            raise _unsupported(key, f"bounds of {MAX_BOUND_DIGITS} digits or more are not supported")
        return v

    def _int_bounds(self, schema: Mapping[str, Any]) -> tuple[int | None, int | None]:
        lo: int | None = None
        hi: int | None = None
        mn, mx = self._bound(schema, "minimum"), self._bound(schema, "maximum")
        emn, emx = self._bound(schema, "exclusiveMinimum"), self._bound(schema, "exclusiveMaximum")
        if schema.get("exclusiveMinimum") is True and mn is not None:
            emn, mn = mn, None
        if schema.get("exclusiveMaximum") is True and mx is not None:
            emx, mx = mx, None
        if mn is not None:
            lo = math.ceil(mn)
        if emn is not None:
            v = math.floor(emn) + 1
            lo = v if lo is None else max(lo, v)
        if mx is not None:
            hi = math.floor(mx)
        if emx is not None:
            v = math.ceil(emx) - 1
            hi = v if hi is None else min(hi, v)
        return lo, hi

    def _integer(self, schema: Mapping[str, Any], name: str) -> str:
        lo, hi = self._int_bounds(schema)
        if lo is None and hi is None:
            return self._primitive("integer")
        if lo is not None and hi is not None and lo > hi:
            raise InvalidRequestError("integer bounds are empty (minimum > maximum)")
        return self._add(name, f"({int_range(lo, hi)}) space")

    def _number(self, schema: Mapping[str, Any], name: str) -> str:
        keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        bounds = {k: schema[k] for k in keys if k in schema and not isinstance(schema[k], bool)}
        if not bounds:
            return self._primitive("number")
        for k, v in bounds.items():
            if isinstance(v, int) and abs(v) >= 10**MAX_BOUND_DIGITS:
                raise _unsupported(k, f"bounds of {MAX_BOUND_DIGITS} digits or more are not supported")
            if isinstance(v, int):
                continue
            if not isinstance(v, float) or not math.isfinite(v) or not v.is_integer():
                raise _unsupported(k, 'for type "number" only integer bounds are supported')
        lo: tuple[int, bool] | None = None  # (bound, strict)
        hi: tuple[int, bool] | None = None
        for k, strict, is_lo in (("minimum", False, True), ("exclusiveMinimum", True, True),
                                 ("maximum", False, False), ("exclusiveMaximum", True, False)):
            if k not in bounds:
                continue
            v = int(bounds[k])
            if is_lo:
                if lo is None or v > lo[0] or (v == lo[0] and strict):
                    lo = (v, strict)
            elif hi is None or v < hi[0] or (v == hi[0] and strict):
                hi = (v, strict)
        if schema.get("exclusiveMinimum") is True and lo is not None:
            lo = (lo[0], True)
        if schema.get("exclusiveMaximum") is True and hi is not None:
            hi = (hi[0], True)
        body = number_range(lo, hi)
        if body is None:
            raise InvalidRequestError("number bounds are empty (minimum > maximum)")
        return self._add(name, f"({body}) space")


# Integers without an upper bound get at most this many digits (the integer primitive's), or one
# more than the lower bound's. Bounds have fewer than MAX_BOUND_DIGITS digits (each digit nests
# one group in the grammar, and the grammar parser limits nesting).
UNBOUNDED_DIGITS = 16
MAX_BOUND_DIGITS = 100

FRACTION = '"." [0-9]{1,16}'
NONZERO_FRACTION = '"." [0-9]{0,7} [1-9] [0-9]{0,8}'
ZERO_FRACTION = '("." "0"{1,16})?'


def _magnitude_range(a: int, a_strict: bool, b: int | None, b_strict: bool) -> str | None:
    """Decimals m (no sign, no exponent) with a < or <= m < or <= b; b None = unbounded."""
    if b is not None and (b < a or (b == a and (a_strict or b_strict))):
        return None
    if b is not None and b == a:
        return f'"{a}" {ZERO_FRACTION}'
    alts = []
    inner_hi = None if b is None else b - 1
    if inner_hi is None or a + 1 <= inner_hi:
        alts.append(f"({_nonneg_range(a + 1, inner_hi)}) ({FRACTION})?")
    alts.append(f'"{a}" {NONZERO_FRACTION}' if a_strict else f'"{a}" ({FRACTION})?')
    if b is not None and not b_strict:
        alts.append(f'"{b}" {ZERO_FRACTION}')
    return " | ".join(alts)


def number_range(lo: tuple[int, bool] | None, hi: tuple[int, bool] | None) -> str | None:
    """GBNF (without trailing space) for JSON numbers (no exponent) within integer bounds, each
    (value, strict) or None; None when the range is empty."""
    alts = []
    # non-negative part: m in [max(lo, 0), hi]
    if hi is None or hi[0] > 0 or (hi[0] == 0 and not hi[1]):
        a, a_strict = (0, False) if lo is None or lo[0] < 0 else lo
        b, b_strict = (None, False) if hi is None else hi
        r = _magnitude_range(a, a_strict, b, b_strict)
        if r:
            alts.append(f"({r})")
    # negative part: x = -m, m in (0 or -hi, -lo]
    if lo is None or lo[0] < 0:
        if hi is not None and hi[0] < 0:
            a, a_strict = -hi[0], hi[1]
        else:
            a, a_strict = 0, True
        b, b_strict = (None, False) if lo is None else (-lo[0], lo[1])
        r = _magnitude_range(a, a_strict, b, b_strict)
        if r:
            alts.append(f'"-" ({r})')
    return " | ".join(alts) if alts else None


def _digits_same_len(a: str, b: str) -> str:
    """GBNF for decimal strings of equal length between a and b inclusive (a <= b)."""
    if not a:
        return '""'
    if a == b:
        return _literal(a)
    n = len(a)
    if a[1:] == "0" * (n - 1) and b[1:] == "9" * (n - 1):
        head = f"[{a[0]}-{b[0]}]" if a[0] != b[0] else _literal(a[0])
        return head + (f" [0-9]{{{n - 1}}}" if n > 1 else "")
    if a[0] == b[0]:
        return f"{_literal(a[0])} ({_digits_same_len(a[1:], b[1:])})"
    alts = [f"{_literal(a[0])} ({_digits_same_len(a[1:], '9' * (n - 1))})"]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        mid = f"[{int(a[0]) + 1}-{int(b[0]) - 1}]"
        alts.append(mid + (f" [0-9]{{{n - 1}}}" if n > 1 else ""))
    alts.append(f"{_literal(b[0])} ({_digits_same_len('0' * (n - 1), b[1:])})")
    return " | ".join(alts)


def _nonneg_range(lo: int, hi: int | None) -> str:
    """Decimal (no leading zeros) for integers in [lo, hi], 0 <= lo, hi None = unbounded."""
    alts = []
    if lo == 0:
        alts.append('"0"')
        lo = 1
        if hi == 0:
            return alts[0]
    if hi is not None and hi < lo:
        return " | ".join(alts) if alts else '"0"'
    ll = len(str(lo))
    hl = len(str(hi)) if hi is not None else ll
    for length in range(ll, hl + 1):
        a = max(lo, 10 ** (length - 1))
        b = 10**length - 1 if hi is None else min(hi, 10**length - 1)
        if a <= b:
            alts.append(f"({_digits_same_len(str(a), str(b))})")
    if hi is None:
        # Longer numbers than lo's, up to the 16 digits of an unbounded integer (and one more
        # digit than lo's when lo already has 16 or more).
        longest = max(UNBOUNDED_DIGITS - 1, ll)
        alts.append(f"[1-9] [0-9]{{{ll},{longest}}}")
    return " | ".join(alts)


def int_range(lo: int | None, hi: int | None) -> str:
    """GBNF (without trailing space) for JSON integers in [lo, hi]; None = unbounded."""
    alts = []
    # negative part: -m for m in [max(1, -hi), -lo]
    if lo is None or lo < 0:
        m_lo = 1 if hi is None or hi >= 0 else -hi
        m_hi = None if lo is None else -lo
        alts.append(f'"-" ({_nonneg_range(m_lo, m_hi)})')
    if hi is None or hi >= 0:
        n_lo = 0 if lo is None or lo < 0 else lo
        alts.append(f"({_nonneg_range(n_lo, hi)})")
    return " | ".join(alts)


class RegexToGrammar:
    """Translate a regex (the documented subset) into a GBNF expression matching the JSON string
    content of its matches: quotes and backslashes come out escaped, control characters never."""

    SAFE_EXCLUDE = '"\\\\\\x7F\\x00-\\x1F'

    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0

    def error(self, what: str) -> InvalidRequestError:
        return InvalidRequestError(f'Unsupported "pattern" {self.p!r}: {what} (at position {self.i})')

    def convert(self) -> str:
        p = self.p
        if p.startswith("^"):
            self.i = 1
        end = len(p)
        if p.endswith("$") and not p.endswith("\\$"):
            end -= 1
        self.end = end
        out = self.alternation(depth=0)
        if self.i != self.end:
            raise self.error("unbalanced parenthesis")
        return out

    def alternation(self, depth: int) -> str:
        if depth > 50:
            raise self.error("groups nested too deeply")
        alts = [self.sequence(depth)]
        while self.i < self.end and self.p[self.i] == "|":
            self.i += 1
            alts.append(self.sequence(depth))
        return " | ".join(a if a else '""' for a in alts)

    def sequence(self, depth: int) -> str:
        items: list[str] = []
        while self.i < self.end and self.p[self.i] not in "|)":
            atom = self.atom(depth)
            atom = self.quantifier(atom)
            items.append(atom)
        return " ".join(items)

    def quantifier(self, atom: str) -> str:
        if self.i >= self.end:
            return atom
        c = self.p[self.i]
        q = None
        if c in "*+?":
            q = c
            self.i += 1
        elif c == "{":
            m = re.match(r"\{(\d+)(,(\d*))?\}", self.p[self.i:self.end])
            if not m:
                raise self.error("malformed {m,n}")
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            if lo > MAX_COUNT or (hi is not None and hi > MAX_COUNT):
                raise self.error(f"repetition above {MAX_COUNT}")
            if hi is not None and hi < lo:
                raise self.error("{m,n} with n < m")
            q = f"{{{lo},{'' if hi is None else hi}}}" if m.group(2) is not None else f"{{{lo}}}"
            self.i += m.end()
        if q is None:
            return atom
        if self.i < self.end and self.p[self.i] in "?+":
            self.i += 1  # lazy / possessive: same language
        return f"({atom}){q}"

    def atom(self, depth: int) -> str:
        c = self.p[self.i]
        if c == "(":
            self.i += 1
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.p.startswith("?", self.i):
                raise self.error("look-around and named groups are not supported")
            inner = self.alternation(depth + 1)
            if self.i >= self.end or self.p[self.i] != ")":
                raise self.error("missing ')'")
            self.i += 1
            return f"({inner})"
        if c == "[":
            return self.char_class()
        if c == ".":
            self.i += 1
            return self.cls_expr(False, [], any_char=True)
        if c == "\\":
            return self.escape(in_class=False)[0]
        if c in "*+?{":
            raise self.error(f"nothing to repeat before {c!r}")
        if c in "^$":
            raise self.error("anchors inside the pattern are not supported")
        self.i += 1
        return self.lit(c)

    def lit(self, ch: str) -> str:
        if ch == '"':
            return '"\\\\\\""'
        if ch == "\\":
            return '"\\\\\\\\"'
        if ord(ch) < 0x20:
            return '"\\\\u00' + f'{ord(ch):02x}"'
        return _literal(ch)

    SHORTHAND: ClassVar[dict[str, tuple[bool, list[tuple[int, int]]]]] = {
        "d": (False, [(0x30, 0x39)]),
        "D": (True, [(0x30, 0x39)]),
        "w": (False, [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), (0x5F, 0x5F)]),
        "W": (True, [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), (0x5F, 0x5F)]),
        "s": (False, [(0x20, 0x20), (0x09, 0x0D)]),
        "S": (True, [(0x20, 0x20), (0x09, 0x0D)]),
    }

    def escape(self, in_class: bool) -> tuple[str, Any]:
        """Returns (expression, ranges-or-shorthand) for the escape at self.i."""
        if self.i + 1 >= len(self.p):
            raise self.error("trailing backslash")
        e = self.p[self.i + 1]
        self.i += 2
        if e in self.SHORTHAND:
            neg, ranges = self.SHORTHAND[e]
            return self.cls_expr(neg, ranges), ("class", neg, ranges)
        simple = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
        if e in simple:
            ch = simple[e]
        elif e == "u":
            h = self.p[self.i:self.i + 4]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", h):
                raise self.error("malformed \\u escape")
            self.i += 4
            ch = chr(int(h, 16))
        elif e == "x":
            h = self.p[self.i:self.i + 2]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", h):
                raise self.error("malformed \\x escape")
            self.i += 2
            ch = chr(int(h, 16))
        elif e.isalnum():
            raise self.error(f"escape \\{e} (back-references, word boundaries, ...) is not supported")
        else:
            ch = e
        return self.lit(ch), ("char", ord(ch))

    def char_class(self) -> str:
        self.i += 1
        neg = False
        if self.i < self.end and self.p[self.i] == "^":
            neg = True
            self.i += 1
        ranges: list[tuple[int, int]] = []
        subclasses: list[tuple[bool, list[tuple[int, int]]]] = []
        first = True
        while True:
            if self.i >= self.end:
                raise self.error("missing ']'")
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "\\":
                _, info = self.escape(in_class=True)
                if info[0] == "class":
                    if neg or info[1]:
                        raise self.error("negated shorthand classes inside [...] are not supported")
                    subclasses.append((info[1], info[2]))
                    continue
                lo = info[1]
            else:
                lo = ord(c)
                self.i += 1
            hi = lo
            if self.i + 1 < self.end and self.p[self.i] == "-" and self.p[self.i + 1] != "]":
                self.i += 1
                if self.p[self.i] == "\\":
                    _, info = self.escape(in_class=True)
                    if info[0] != "char":
                        raise self.error("class shorthand as a range end")
                    hi = info[1]
                else:
                    hi = ord(self.p[self.i])
                    self.i += 1
                if hi < lo:
                    raise self.error("reversed range in [...]")
            ranges.append((lo, hi))
        for _, r in subclasses:
            ranges.extend(r)
        return self.cls_expr(neg, ranges)

    def cls_expr(self, neg: bool, ranges: list[tuple[int, int]], any_char: bool = False) -> str:
        """A class as JSON string content: unsafe characters (quote, backslash, controls) are
        excluded from the raw class and, when the class admits them, added back escaped."""
        unsafe = [0x22, 0x5C] + list(range(0x20))

        def admits(cp: int) -> bool:
            if any_char:
                return cp != 0x0A
            inside = any(lo <= cp <= hi for lo, hi in ranges)
            return inside != neg

        extra = [self.lit(chr(cp)) for cp in unsafe if admits(cp)]
        if any_char:
            raw = f"[^{self.SAFE_EXCLUDE}]"
        elif neg:
            raw = "[^" + self.SAFE_EXCLUDE + "".join(self._rng(lo, hi) for lo, hi in ranges) + "]"
        else:
            safe: list[tuple[int, int]] = []
            for lo, hi in ranges:
                for a, b in _subtract(lo, hi, [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]):
                    safe.append((a, b))
            raw = "[" + "".join(self._rng(lo, hi) for lo, hi in safe) + "]" if safe else ""
        alts = ([raw] if raw else []) + extra
        if not alts:
            raise self.error("a character class that matches nothing")
        return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"

    @staticmethod
    def _rng(lo: int, hi: int) -> str:
        return _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}"


def _subtract(lo: int, hi: int, holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    parts = [(lo, hi)]
    for a, b in holes:
        nxt = []
        for x, y in parts:
            if b < x or a > y:
                nxt.append((x, y))
                continue
            if x < a:
                nxt.append((x, a - 1))
            if b < y:
                nxt.append((b + 1, y))
        parts = nxt
    return parts


def schema_to_grammar(schema: Any) -> str:
    """GBNF for JSON text matching `schema` (root rule `root`)."""
    if isinstance(schema, Mapping) and not schema:
        schema = True
    conv = SchemaConverter(schema)
    conv.rules["root"] = conv.visit(schema, "root")
    return conv.grammar()
