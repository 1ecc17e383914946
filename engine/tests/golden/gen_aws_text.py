"""Writes aws_text.golden: one case per argument type (Int, Decimal, Boolean, String,
Array, Object, Null, Undefined) for the AWS IoT SQL functions that read a String (the
standard String conversion first: numbers and Booleans written out, an Array or Object as
its JSON text, Null and Undefined Undefined), and for chr. Run `python3 gen_aws_text.py`
from this directory."""
import base64
import hashlib
import json

UNDEF = object()
ROWS = [
    ("int", 71, "71"), ("decimal", -2.5, "-2.5"), ("boolean", True, "true"),
    ("string", "añb7", "añb7"), ("array", ["A", 1], '["A",1]'),
    ("object", {"K": 7}, '{"K":7}'), ("null", None, UNDEF), ("undefined", UNDEF, UNDEF),
]

FUNCS = [
    ("md5", "md5(x)", lambda t: hashlib.md5(t.encode()).hexdigest()),
    ("sha256", "sha256(x)", lambda t: hashlib.sha256(t.encode()).hexdigest()),
    ("length", "length(x)", lambda t: len(t)),
    ("numbytes", "numbytes(x)", lambda t: len(t.encode())),
    ("startswith", "startswith(x, '7')", lambda t: t.startswith("7")),
    ("endswith", "endswith(x, '1')", lambda t: t.endswith("1")),
    ("indexof", "indexof(x, '1')", lambda t: t.find("1")),
    ("substring", "substring(x, 1)", lambda t: t[1:]),
    ("encode", "encode(x, 'base64')", lambda t: base64.b64encode(t.encode()).decode()),
]

cases = []
for fn, expr, f in FUNCS:
    for label, value, text in ROWS:
        cases.append((f"{fn}-{label}", expr, value, UNDEF if text is UNDEF else f(text)))

# concat(x, 'y'): Strings joined, an Array among the values makes one Array (AWS's table;
# with Null or Undefined the reference says nothing, so those rows are left out).
for label, value, text in ROWS:
    if text is UNDEF:
        continue
    expected = value + ["y"] if isinstance(value, list) else text + "y"
    cases.append((f"concat-{label}", "concat(x, 'y')", value, expected))

CHR = [("int", 65, "A"), ("decimal", 66.9, "B"), ("string", "67.2", "C"), ("boolean", True, UNDEF),
       ("array", [65], UNDEF), ("object", {"a": 65}, UNDEF), ("null", None, UNDEF),
       ("undefined", UNDEF, UNDEF), ("not-ascii", 200, UNDEF), ("negative", -1, UNDEF)]
for label, value, expected in CHR:
    cases.append((f"chr-{label}", "chr(x)", value, expected))

out = ["# Functions that read a String, one case per argument type; and chr. Written by",
       "# gen_aws_text.py.", "",
       "# The reference's decode example, with its double-quoted scheme.",
       "case decode-example",
       "sql: SELECT decode(encoded_temp, \"base64\").temperature AS temp FROM 'topic/subtopic'",
       "topic: topic/subtopic",
       'in: {"encoded_temp": "eyAidGVtcGVyYXR1cmUiOiAzMyB9Cg=="}',
       'exact: {"temp":33}', ""]
for name, expr, value, expected in cases:
    out += [f"case {name}", f"sql: SELECT {expr} AS r FROM 's'", "topic: s",
            "in: " + ("{}" if value is UNDEF else json.dumps({"x": value}, ensure_ascii=False)),
            "exact: " + ("{}" if expected is UNDEF else json.dumps({"r": expected}, separators=(",", ":"), ensure_ascii=False)), ""]
open("aws_text.golden", "w").write("\n".join(out))
print(len(cases))
