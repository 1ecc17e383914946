"""Writes aws_strings.golden: one case per string function and argument type of the AWS
IoT SQL reference (Int, Decimal, Boolean, String, Array, Object, Null, Undefined), the
reference's examples, and CAST's tables. Run `python3 gen_aws_strings.py` from this
directory; an argument that is not a String is converted to one first (an Array or an
Object to its JSON text), Null and Undefined give Undefined."""
import json

UNDEF = object()
ROWS = [
    ("int", 7, "7"), ("decimal", -2.5, "-2.5"), ("boolean", True, "true"),
    ("string", " Mixed Case ", " Mixed Case "), ("array", ["A", 1], '["A",1]'),
    ("object", {"K": "V"}, '{"K":"V"}'), ("null", None, UNDEF), ("undefined", UNDEF, UNDEF),
]

def str_cases(fn, f, extra=""):
    for label, value, text in ROWS:
        expected = UNDEF if text is UNDEF else f(text)
        yield (f"{fn}-{label}", f"{fn}(x{extra})", value, expected)

cases = []
cases += str_cases("lower", str.lower)
cases += str_cases("upper", str.upper)
cases += str_cases("trim", lambda t: t.strip(" \t"))
cases += str_cases("ltrim", lambda t: t.lstrip(" \t"))
cases += str_cases("rtrim", lambda t: t.rstrip(" \t"))
cases += str_cases("lpad", lambda t: "  " + t, ", 2")
cases += str_cases("rpad", lambda t: t + "  ", ", 2")
cases += str_cases("replace", lambda t: t.replace("A", "a"), ", 'A', 'a'")
cases += str_cases("regexp_matches", lambda t: "e" in t, ", 'e'")
cases += str_cases("regexp_replace", lambda t: t.replace("e", "E"), ", 'e', 'E'")

examples = [
    ("lower('HELLO')", "hello"), ("lower(['HELLO'])", '["hello"]'), ("upper('hello')", "HELLO"),
    ("upper(['hello'])", '["HELLO"]'),
    ("lpad('hello', 2)", "  hello"), ("lpad(1, 3)", "   1"), ("rpad('hello', 2)", "hello  "),
    ("rpad(1, 3)", "1   "), ("lpad('x', -5)", "x"), ("length(lpad('x', 5000))", 1001),
    ("lpad('x', 2.9)", "  x"), ("lpad('x', '3')", "   x"), ("lpad('x', [3])", UNDEF),
    ("rtrim(' h i ')", " h i"), ("trim(' hi ')", "hi"), ("ltrim(' h i ')", "h i "),
    ("regexp_matches('aaaa', 'a{2,}')", True), ("regexp_matches('aaaa', 'b')", False),
    ("regexp_replace('abcd', 'bc', 'x')", "axd"), ("regexp_replace('abcd', 'b(.*)d', '$1')", "ac"),
    ("regexp_substr('hihihello', 'hi')", "hi"), ("regexp_substr('hihihello', '(hi)*')", "hihi"),
    ("replace('abcd', 'bc', 'x')", "axd"), ("replace('abcdabcd', 'b', 'x')", "axcdaxcd"),
    # CAST, by the reference's cast tables.
    ("cast(true AS Int)", 1), ("cast('12.7' AS Int)", 12), ("cast(12.7 AS Int)", 12),
    ("cast('abc' AS Int)", UNDEF), ("cast([1] AS Int)", UNDEF), ("cast('2.5' AS Decimal)", 2.5),
    ("cast(true AS Decimal)", 1.0), ("cast(0 AS Boolean)", False), ("cast(2.5 AS Boolean)", True),
    ("cast('TRUE' AS Boolean)", True), ("cast([1, 2] AS String)", '[1,2]'),
    ("cast(7 AS String)", "7"), ("cast(false AS String)", "false"),
]

def v2(x):
    """As 2016-03-23 writes a value: a whole-number Decimal as an Int."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x

out = ["# String functions and CAST, one case per argument type of the AWS IoT SQL reference,",
       "# and its examples. Written by gen_aws_strings.py.", ""]
for name, expr, value, expected in cases:
    out += [f"case {name}", f"sql: SELECT {expr} AS r FROM 's'", "topic: s",
            "in: " + ("{}" if value is UNDEF else json.dumps({"x": value})),
            "exact: " + ("{}" if expected is UNDEF else json.dumps({"r": v2(expected)}, separators=(",", ":"), ensure_ascii=False)), ""]
for k, (expr, expected) in enumerate(examples):
    name = expr.split("(")[0]
    out += [f"case example-{k}-{name}", f"sql: SELECT {expr} AS r FROM 's'", "topic: s", "in: {}",
            "exact: " + ("{}" if expected is UNDEF else json.dumps({"r": v2(expected)}, separators=(",", ":"), ensure_ascii=False)), ""]
open("aws_strings.golden", "w").write("\n".join(out))
print(len(cases) + len(examples))
