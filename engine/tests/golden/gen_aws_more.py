"""Writes aws_more.golden: one case per argument type (Int, Decimal, numeric and other
String, Boolean, Array, Object, Null, Undefined) for the AWS IoT SQL functions that the
other generators leave out: mod, remainder, power, atan2, log, ln, trunc, substring, the
count of lpad and rpad, the
hash functions, encode, decode, get with a computed key, parse_time, time_to_epoch,
transform, topic and sql_version, by the reference's tables and conversion rules, and the
reference's examples. Run `python3 gen_aws_more.py` from this directory."""
import base64
import hashlib
import json
import math

UNDEF = object()
ROWS = [
    ("int", 13), ("decimal", 13.5), ("numeric-string", "13.5"), ("text", "abc"),
    ("boolean", True), ("array", [1]), ("object", {"a": 1}), ("null", None),
    ("undefined", UNDEF),
]


def number(v):
    """To Decimal, as the reference's conversions table says (Null is left to callers)."""
    if isinstance(v, bool) or v is None or v is UNDEF:
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            return None
    return None


def text(v):
    """To String: numbers in standard notation, Booleans lowercase, Arrays and Objects as
    JSON; Null and Undefined do not convert."""
    if v is None or v is UNDEF:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def java_rem(a, b):
    """Java's BigDecimal remainder: the sign follows the dividend."""
    if isinstance(a, int) and isinstance(b, int):
        return int(math.fmod(a, b))
    return math.fmod(a, b)


cases = []


def case(name, expr, value, expected, topic="s"):
    cases.append((name, expr, value, expected, topic))


for label, v in ROWS:
    x = number(v)
    for fn in ("mod", "remainder"):
        case(f"{fn}-first-{label}", f"{fn}(x, 4)", v, UNDEF if x is None else java_rem(x, 4))
        case(f"{fn}-second-{label}", f"{fn}(30, x)", v, UNDEF if x is None else java_rem(30, x))
    case(f"percent-{label}", "x % 4", v, UNDEF if x is None else java_rem(x, 4))
    case(f"power-base-{label}", "power(x, 2)", v, UNDEF if x is None else float(x) ** 2)
    case(f"power-exponent-{label}", "power(4, x)", v, UNDEF if x is None else 4.0 ** x)
    case(f"atan2-{label}", "atan2(x, 2)", v, UNDEF if x is None else math.atan2(x, 2))
    case(f"log-{label}", "log(x)", v, UNDEF if x is None else math.log10(x))
    case(f"ln-{label}", "ln(x)", v, UNDEF if x is None else math.log(x))
    # trunc: the first argument converted to a Decimal, the result without trailing zeroes.
    case(f"trunc-{label}", "trunc(x, 0)", v, UNDEF if x is None else math.trunc(x))

    # substring: the first argument converted to a String, the indices to Ints.
    s = text(v)
    case(f"substring-string-{label}", "substring(x, 1)", v, UNDEF if s is None else s[1:])
    i = number(v)
    case(f"lpad-count-{label}", "lpad('x', x)", v, UNDEF if i is None else " " * math.floor(i) + "x")
    case(f"rpad-count-{label}", "rpad('x', x)", v, UNDEF if i is None else "x" + " " * math.floor(i))
    case(f"substring-index-{label}", "substring('abcdefghijklmnopq', x)", v,
         UNDEF if i is None else "abcdefghijklmnopq"[math.floor(i):])
    case(f"substring-end-{label}", "substring('abcdefghijklmnopq', 1, x)", v,
         UNDEF if i is None else "abcdefghijklmnopq"[1:math.floor(i)])

    # The hash functions and encode hash or encode the argument's String form.
    for fn in ("sha1", "sha224", "sha256", "sha384", "sha512", "md5"):
        case(f"{fn}-{label}", f"{fn}(x)", v,
             UNDEF if s is None else hashlib.new(fn, s.encode()).hexdigest())
    case(f"encode-{label}", "encode(x, 'base64')", v,
         UNDEF if s is None else base64.b64encode(s.encode()).decode())

    # parse_time: a Long timestamp; a numeric String or a Decimal converted.
    case(f"parse-time-{label}", "parse_time('yyyy-MM-dd HH:mm', x * 100000000)", v,
         UNDEF if x is None else {13: "1970-01-16 01:06", 13.5: "1970-01-16 15:00"}[x])
    case(f"parse-time-ms-{label}", "parse_time('yyyy-MM-dd HH:mm', x)", v,
         UNDEF if x is None else "1970-01-01 00:00")
    # time_to_epoch: the text converted to a String, then read by the pattern.
    case(f"time-to-epoch-{label}", "time_to_epoch(x, 'yy')", v,
         UNDEF if s is None or not s.isdigit() or len(s) != 2 else
         {"13": 1356998400000}[s])

    # transform: a String mode, an Object, an Array of Objects.
    case(f"transform-mode-{label}", "transform(x, {'k': 1}, [{'a': 2}])", v,
         [{"a": 2, "k": 1}] if v == "enrichArray" else UNDEF)
    case(f"transform-object-{label}", "transform('enrichArray', x, [{'b': 2}])", v,
         [{"b": 2, **v}] if isinstance(v, dict) else UNDEF)
    case(f"transform-array-{label}", "transform('enrichArray', {'k': 1}, x)", v,
         UNDEF)


# The functions' own examples and the rows the loop above cannot give.
EXAMPLES = [
    ("mod-example", "mod(8, 3)", UNDEF, 2),
    ("remainder-example", "remainder(8, 3)", UNDEF, 2),
    ("mod-negative-dividend", "mod(-7, 3)", UNDEF, -1),
    ("mod-negative-divisor", "mod(7, -3)", UNDEF, 1),
    ("mod-decimal", "mod(7.5, 2)", UNDEF, 1.5),
    ("trunc-example-0", "trunc(2.3, 0)", UNDEF, 2),
    ("trunc-example-2", "trunc(2.3123, 2)", UNDEF, 2.31),
    ("trunc-example-2b", "trunc(2.888, 2)", UNDEF, 2.88),
    ("trunc-example-5", "trunc(2.00, 5)", UNDEF, 2),
    ("trunc-negative-places", "trunc(2.888, -1)", UNDEF, 2),
    ("trunc-places-rounded-down", "trunc(2.888, 1.9)", UNDEF, 2.8),
    ("trunc-string", "trunc('2.888', 2)", UNDEF, 2.88),
    ("trunc-int", "trunc(7, 2)", UNDEF, 7),
    ("substring-example-a", "substring('012345', 0)", UNDEF, "012345"),
    ("substring-example-b", "substring('012345', 2)", UNDEF, "2345"),
    ("substring-example-c", "substring('012345', 2.745)", UNDEF, "2345"),
    ("substring-example-d", "substring(123, 2)", UNDEF, "3"),
    ("substring-example-e", "substring('012345', -1)", UNDEF, "012345"),
    ("substring-example-f", "substring(true, 1.2)", UNDEF, "rue"),
    ("substring-example-g", "substring(false, -2.411E247)", UNDEF, "false"),
    ("substring-example-h", "substring('012345', 1, 3)", UNDEF, "12"),
    ("substring-example-i", "substring('012345', -50, 50)", UNDEF, "012345"),
    ("substring-example-j", "substring('012345', 3, 1)", UNDEF, ""),
    ("md2-example", "md2('hello')", UNDEF, "a9046c73e00331af68917d3804f70655"),
    ("md5-example", "md5('hello')", UNDEF, "5d41402abc4b2a76b9719d911017c592"),
    ("chr-example", "chr(49)", UNDEF, "1"),
    ("ln-example", "ln(2.718281828459045)", UNDEF, 1),
    ("get-example-array", 'get(["a", "b", "c"], 1)', UNDEF, "b"),
    ("get-example-object", 'get({"a":"b"}, "a")', UNDEF, "b"),
    # The reference's example says "a", against its own table (0-based, as for Arrays).
    ("get-example-string", 'get("abc", 1)', UNDEF, "b"),
    ("get-computed-key-object", "get(x.o, x.k)", {"o": {"a": "b"}, "k": "a"}, "b"),
    ("get-computed-index-array", "get(x.a, x.i)", {"a": ["p", "q", "r"], "i": 2}, "r"),
    ("get-computed-index-string", "get(x.a, x.i)", {"a": "pqr", "i": 0}, "p"),
    ("get-string-index-converted", "get(x, '1')", ["p", "q", "r"], "q"),
    ("get-boolean-index", "get(x, true)", ["p", "q", "r"], UNDEF),
    ("get-object-int-key", "get(x, 1)", {"1": "one"}, UNDEF),
    ("get-computed-missing-key", "get(x.o, x.k)", {"o": {"a": "b"}, "k": "z"}, UNDEF),
    ("get-computed-key-undefined", "get(x.o, x.k)", {"o": {"a": "b"}}, UNDEF),
    ("parse-time-example", "parse_time(\"yyyy.MM.dd G 'at' HH:mm:ss z\", 100000000, 'America/Belize')",
     UNDEF, "1970.01.01 AD at 21:46:40 CST"),
    ("parse-time-default-utc", "parse_time('yyyy-MM-dd HH:mm:ss', 100000000)", UNDEF,
     "1970-01-02 03:46:40"),
    ("parse-time-bad-zone", "parse_time('HH', 0, 'Mars/Olympus')", UNDEF, UNDEF),
    ("parse-time-zone-not-a-string", "parse_time('HH', 0, 5)", UNDEF, UNDEF),
    ("time-to-epoch-example-a", "time_to_epoch('2020-04-03 09:45:18 UTC+01:00', 'yyyy-MM-dd HH:mm:ss VV')",
     UNDEF, 1585903518000),
    ("time-to-epoch-example-b", "time_to_epoch('18 December 2015', 'dd MMMM yyyy')", UNDEF,
     1450396800000),
    ("time-to-epoch-example-c",
     "time_to_epoch('2007-12-03 10:15:30.592 America/Los_Angeles', 'yyyy-MM-dd HH:mm:ss.SSS z')",
     UNDEF, 1196705730592),
    ("time-to-epoch-not-matching", "time_to_epoch('December', 'yyyy')", UNDEF, UNDEF),
    ("time-to-epoch-pattern-not-a-string", "time_to_epoch('13', 5)", UNDEF, UNDEF),
    ("transform-example-rename", "transform('enrichArray', {'key': x.attributes.data1}, x.values)",
     {"attributes": {"data1": 1, "data2": 2}, "values": [{"a": 3}, {"b": 4}, {"c": 5}]},
     [{"a": 3, "key": 1}, {"b": 4, "key": 1}, {"c": 5, "key": 1}]),
    ("transform-empty-array", "transform('enrichArray', {'k': 1}, x)", [], []),
    ("decode-not-base64", "decode(x, 'base64')", "!!!", None),
    ("decode-null", "decode(x, 'base64')", None, UNDEF),
    ("decode-undefined", "decode(x, 'base64')", UNDEF, UNDEF),
    ("decode-json", "decode(x, 'base64')", base64.b64encode(b'{"a":1}').decode(), {"a": 1}),
    ("decode-text", "decode(x, 'base64')", base64.b64encode(b"hello").decode(), "hello"),
    ("decode-number", "decode(x, 'base64')", base64.b64encode(b"80").decode(), 80),
    ("decode-member", "decode(x, 'base64').temperature",
     base64.b64encode(b'{ "temperature": 33 }\n').decode(), 33),
    ("topic-whole", "topic()", UNDEF, "a/b/c"),
    ("topic-first", "topic(1)", UNDEF, "a"),
    ("topic-last", "topic(3)", UNDEF, "c"),
    ("topic-zero", "topic(0)", UNDEF, UNDEF),
    ("topic-past-the-end", "topic(4)", UNDEF, UNDEF),
    ("sql-version", "sql_version()", UNDEF, "2016-03-23"),
]
for name, expr, value, expected in EXAMPLES:
    case(name, expr, value, expected, topic="a/b/c" if name.startswith("topic") else "s")

out = ["# Functions by argument type and the reference's examples: mod, remainder, %, power,",
       "# atan2, log, ln, trunc, substring, hashes, encode, decode, get, parse_time,",
       "# time_to_epoch, transform, topic, sql_version. Written by gen_aws_more.py.", ""]
for name, expr, value, expected, topic in cases:
    out += [f"case {name}", f"sql: SELECT {expr} AS r FROM '{topic}'", f"topic: {topic}",
            "in: " + ("{}" if value is UNDEF else json.dumps({"x": value})),
            "out: " + ("{}" if expected is UNDEF else json.dumps({"r": expected}))]
    out.append("")
open("aws_more.golden", "w").write("\n".join(out))
print(len(cases))
