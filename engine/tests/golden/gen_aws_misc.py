"""Writes aws_misc.golden: one case per argument type (Int, Decimal, Boolean, String,
Array, Object, Null, Undefined) for the bit functions, mod, nanvl, isNull, isUndefined and
get, by the AWS IoT SQL reference's tables. Run `python3 gen_aws_misc.py` from this
directory."""
import json
import math

UNDEF = object()
ROWS = [
    ("int", 13), ("decimal", 13.7), ("numeric-string", "13.2"), ("text", "abc"),
    ("boolean", True), ("array", [1]), ("object", {"a": 1}), ("null", None),
    ("undefined", UNDEF),
]

def as_int(v):
    """AWS's conversion for the bit functions: numbers and numeric Strings rounded down."""
    if isinstance(v, bool) or v is None or v is UNDEF:
        return None
    if isinstance(v, (int, float)):
        return math.floor(v)
    if isinstance(v, str):
        try:
            return math.floor(float(v))
        except ValueError:
            return None
    return None

cases = []
for label, v in ROWS:
    x = as_int(v)
    cases.append((f"bitand-{label}", "bitand(x, 5)", v, UNDEF if x is None else x & 5))
    cases.append((f"bitor-{label}", "bitor(x, 5)", v, UNDEF if x is None else x | 5))
    cases.append((f"bitxor-{label}", "bitxor(5, x)", v, UNDEF if x is None else x ^ 5))
    cases.append((f"bitnot-{label}", "bitnot(x)", v, UNDEF if x is None else ~x))
    cases.append((f"isnull-{label}", "isNull(x)", v, v is None))
    cases.append((f"isundefined-{label}", "isUndefined(x)", v, v is UNDEF))
    cases.append((f"nanvl-{label}", "nanvl(x, 'other')", v, "other" if v is None or v is UNDEF else v))

GET = [
    ("array-index", "get(x, 1)", ["a", "b", "c"], "b"),
    ("string", "get(x, 1)", "abc", "b"),
    ("string-out-of-range", "get(x, 3)", "abc", UNDEF),
    ("array-out-of-range", "get(x, 3)", ["a", "b", "c"], UNDEF),
    ("array-negative", "get(x, -1)", ["a", "b", "c"], UNDEF),
    ("object-key", "get(x, 'a')", {"a": "b"}, "b"),
    ("object-missing-key", "get(x, 'z')", {"a": "b"}, UNDEF),
    ("int", "get(x, 0)", 5, UNDEF),
    ("boolean", "get(x, 0)", True, UNDEF),
    ("null", "get(x, 0)", None, UNDEF),
    ("undefined", "get(x, 0)", UNDEF, UNDEF),
]
for label, expr, v, expected in GET:
    cases.append((f"get-{label}", expr, v, expected))

out = ["# Bit functions, isNull, isUndefined, nanvl and get, one case per argument type.",
       "# Written by gen_aws_misc.py.", ""]
for name, expr, value, expected in cases:
    out += [f"case {name}", f"sql: SELECT {expr} AS r FROM 's'", "topic: s",
            "in: " + ("{}" if value is UNDEF else json.dumps({"x": value})),
            "out: " + ("{}" if expected is UNDEF else json.dumps({"r": expected}))]
    out.append("")
open("aws_misc.golden", "w").write("\n".join(out))
print(len(cases))
