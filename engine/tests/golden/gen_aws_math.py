"""Writes aws_math.golden: one case per math function and argument type of the AWS IoT SQL
reference's tables (Int, Decimal, Boolean, String, Array, Object, Null, Undefined), plus
the reference's own examples. Run `python3 gen_aws_math.py` from this directory after
changing the tables below; the expected values come from Python's math module."""
import json
# One case per function and argument type: (name, input value or None for Undefined, expected or None for Undefined)
rows = {
 "Int": 7, "NegInt": -7, "Decimal": -2.5, "Boolean": True, "String": "-5.123", "BadString": "abc",
 "Array": [1, 2], "Object": {"a": 1}, "Null": None,
}
UNDEF = object()
cases = []
def case(fn, label, value, expected, expr=None, exact=False):
    cases.append((fn, label, value, expected, expr, exact))

import math
for fn, f, kind in [
    ("abs", abs, "same"),
    ("ceil", math.ceil, "int"),
    ("floor", math.floor, "int"),
    ("sign", lambda v: (v > 0) - (v < 0), "int"),
    ("round", lambda v: int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1), "int"),
    ("sqrt", None, "double"),
    ("cos", math.cos, "double"),
    ("sin", math.sin, "double"),
    ("tan", math.tan, "double"),
    ("atan", math.atan, "double"),
    ("cosh", math.cosh, "double"),
    ("sinh", math.sinh, "double"),
    ("tanh", math.tanh, "double"),
    ("exp", math.exp, "double"),
]:
    for label, v in rows.items():
        if label in ("Boolean", "BadString", "Array", "Object", "Null"):
            case(fn, label, v, UNDEF); continue
        x = float(v) if label == "String" else v
        if fn == "sqrt":
            if x < 0: case(fn, label, v, UNDEF); continue
            r = math.sqrt(x)
        else:
            r = f(x)
        case(fn, label, v, r)
    case(fn, "Undefined", UNDEF, UNDEF)

# The reference's own examples, and its rules beside the tables.
examples = [
    ("abs(-5)", 5, True), ("acos(0)", 1.5707963267948966, False), ("asin(0)", 0.0, False),
    ("atan(0)", 0.0, False), ("atan2(1, 0)", 1.5707963267948966, False),
    ("ceil(1.2)", 2, True), ("ceil(-1.2)", -1, True), ("floor(1.2)", 1, True), ("floor(-1.2)", -2, True),
    ("cos(0)", 1, False), ("cosh(2.3)", 5.037220649268761, False), ("exp(1)", math.e, False),
    ("ln(exp(1))", 1, False), ("log(100)", 2.0, False), ("power(2, 5)", 32.0, False),
    ("round(1.2)", 1, True), ("round(1.5)", 2, True), ("round(1.7)", 2, True), ("round(-1.1)", -1, True),
    ("round(-1.5)", -2, True), ("sign(-7)", -1, True), ("sign(0)", 0, True), ("sign(13)", 1, True),
    ("sin(0)", 0.0, False), ("sinh(2.3)", 4.936961805545957, False), ("sqrt(9)", 3.0, False),
    ("tan(3)", -0.1425465430742778, False), ("tanh(2.3)", 0.9800963962661914, False),
    ("trunc(2.3, 0)", 2, False), ("trunc(2.3123, 2)", 2.31, False), ("trunc(2.888, 2)", 2.88, False),
    ("trunc(2.00, 5)", 2, False),
    # Imaginary results are Undefined.
    ("acos(2)", UNDEF, False), ("asin(-3)", UNDEF, False), ("sqrt(-4)", UNDEF, False),
    # Strings are converted for every argument.
    ("power('2', '3')", 8, False), ("atan2('1', 0)", 1.5707963267948966, False),
    ("power('two', 3)", UNDEF, False), ("round('2.5')", 3, True),
]

out = ["# Math functions, one case per argument type of the AWS IoT SQL reference's table:",
       "# Int, Decimal, Boolean, String (a number, and not one), Array, Object, Null, Undefined.",
       "# A String is converted to a Decimal first; what does not convert, and the types a",
       "# function does not take, are Undefined (the column is left out).", ""]
for fn, label, v, expected, expr, exact in cases:
    out.append(f"case {fn}-{label.lower()}")
    out.append(f"sql: SELECT {fn}(x) AS r FROM 'm'")
    out.append("topic: m")
    out.append("in: " + ("{}" if v is UNDEF else json.dumps({"x": v})))
    if expected is not UNDEF and fn in ("ceil", "floor", "sign", "round") or (fn == "abs" and label in ("Int", "NegInt")):
        out.append("exact: " + json.dumps({"r": expected}, separators=(",", ":")))
    else:
        out.append("out: " + ("{}" if expected is UNDEF else json.dumps({"r": expected})))
    out.append("")
INT_KIND = {"ceil", "floor", "sign", "round"}
out2 = []
for k, (expr, expected, exact) in enumerate(examples):
    name = expr.split("(")[0]
    out2.append(f"case example-{k}-{name}")
    out2.append(f"sql: SELECT {expr} AS r FROM 'm'")
    out2.append("topic: m")
    out2.append("in: {}")
    if expected is UNDEF:
        out2.append("exact: {}")
    elif exact:
        out2.append("exact: " + json.dumps({"r": expected}, separators=(",", ":")))
    else:
        out2.append("out: " + json.dumps({"r": expected}))
    out2.append("")
out = out + ["# The reference's examples, exactly where the result is an Int.", ""] + out2
open("aws_math.golden", "w").write("\n".join(out))
print(len(cases))
