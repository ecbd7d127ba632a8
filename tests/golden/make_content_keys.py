"""Write tests/golden/content_keys.json, the golden vectors of the content-key spec.

    python3 tests/golden/make_content_keys.py          # rewrite the file
    python3 tests/golden/make_content_keys.py --check  # exit 1 if it would change

Each vector is a Python expression (evaluated in NAMESPACE below) with its
canonical encoding in hex; request vectors also carry the identity bytes and
the content key; error vectors carry the exception type and exact message.
Every vector is computed twice, by the pure-Python reference encoder
(tests/reference_encoder.py) and by the C core, and the script refuses to
write anything when the two disagree. A change to this file is a change of
the key scheme: review its diff as such.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The checkout's own fabric (built in place) and the tests' helpers.
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]

import fabric  # noqa: E402
import reference_encoder  # noqa: E402
from golden import write_or_check  # noqa: E402

OUT = os.path.join(HERE, "content_keys.json")


class Unkeyable:
    """A user class the encoder must refuse."""

    def __repr__(self):
        return "Unkeyable()"


NAMESPACE = {
    "Secret": fabric.Secret,
    "EvalRequest": fabric.EvalRequest,
    "Unkeyable": Unkeyable,
    "nan": float("nan"),
    "inf": float("inf"),
    "REDACTED": fabric.REDACTED,
    "Opaque": fabric.Opaque,
}

VALUES = [
    # name, expression
    ("nil", "None"),
    ("false", "False"),
    ("true", "True"),
    ("positive fixint 0", "0"),
    ("positive fixint 127", "127"),
    ("uint8 128", "128"),
    ("uint8 255", "255"),
    ("uint16 256", "256"),
    ("uint16 65535", "65535"),
    ("uint32 65536", "65536"),
    ("uint32 2**32-1", "2**32 - 1"),
    ("uint64 2**32", "2**32"),
    ("uint64 2**63", "2**63"),
    ("uint64 max", "2**64 - 1"),
    ("negative fixint -1", "-1"),
    ("negative fixint -32", "-32"),
    ("int8 -33", "-33"),
    ("int8 -128", "-128"),
    ("int16 -129", "-129"),
    ("int16 -32768", "-32768"),
    ("int32 -32769", "-32769"),
    ("int32 -2**31", "-2**31"),
    ("int64 -2**31-1", "-2**31 - 1"),
    ("int64 min", "-2**63"),
    ("bigint 2**64", "2**64"),
    ("bigint 2**64 * 255", "2**64 * 255"),
    ("bigint 2**71", "2**71"),
    ("bigint 2**72 - 1", "2**72 - 1"),
    ("bigint -2**63-1", "-2**63 - 1"),
    ("bigint -2**64", "-2**64"),
    ("bigint -2**64-1", "-2**64 - 1"),
    ("bigint 10**40", "10**40"),
    ("bigint -10**40", "-10**40"),
    ("float 0.0", "0.0"),
    ("float -0.0", "-0.0"),
    ("float 1.0", "1.0"),
    ("float 1.5", "1.5"),
    ("float 0.1", "0.1"),
    ("float inf", "inf"),
    ("float -inf", "-inf"),
    ("float nan", "nan"),
    ("float nan with payload", "__import__('struct').unpack('>d', bytes.fromhex('fff0000000000001'))[0]"),
    ("float 1e300", "1e300"),
    ("str empty", "''"),
    ("str a", "'a'"),
    ("str 1", "'1'"),
    ("str fixstr 31", "'x' * 31"),
    ("str8 32", "'x' * 32"),
    ("str16 256", "'x' * 256"),
    ("str utf-8", "'caf\\u00e9 \\u6f22 \\U0001f600'"),
    ("bin empty", "b''"),
    ("bin 1", "b'1'"),
    ("bin8 3", "b'\\x00\\x01\\xff'"),
    ("bin16 256", "b'z' * 256"),
    ("bytearray is bin", "bytearray(b'1')"),
    ("memoryview is bin", "memoryview(b'1')"),
    ("array of int32 is bin of its memory (little-endian machine)",
     "__import__('array').array('i', [1, 2])"),
    ("list empty", "[]"),
    ("tuple empty", "()"),
    ("list [1]", "[1]"),
    ("tuple (1,) same as list", "(1,)"),
    ("nested array", "[1, [2, [3, []]], 'x']"),
    ("array16 of 16 items", "list(range(16))"),
    ("dict empty", "{}"),
    ("dict one", "{'a': 1}"),
    ("dict keys sorted by encoding", "{'b': 1, 'a': 2, 'aa': 3, 1: 4, -1: 5, None: 6}"),
    ("dict insertion order irrelevant", "{None: 6, -1: 5, 1: 4, 'aa': 3, 'a': 2, 'b': 1}"),
    ("dict shorter prefix first", "{'ab': 1, 'a': 2, 'abc': 3}"),
    ("dict non-str keys", "{(1, 2): 'tuple', b'k': 'bin', 1.5: 'float', frozenset({1}): 'set'}"),
    ("dict 0.0 and -0.0 keys are one key in Python", "{0.0: 'a'}"),
    ("dict16 of 16 entries", "{i: i for i in range(16)}"),
    ("set empty", "set()"),
    ("frozenset empty", "frozenset()"),
    ("set of ints sorted by encoding", "{3, 1, 2, -1, 200}"),
    ("set of mixed kinds", "{1, '1', b'1', 1.5, None, (1,)}"),
    ("frozenset same as set", "frozenset({3, 1, 2, -1, 200})"),
    ("set nested in list", "[{1}, frozenset({'a'})]"),
    ("secret", "Secret('hunter2')"),
    ("secret of another value, same bytes", "Secret(12345)"),
    ("secret inside a dict", "{'token': Secret('s3cr3t'), 'user': 'ann'}"),
    ("subclass of int (bool aside) is int", "__import__('enum').IntEnum('E', 'A B').B"),
    ("subclass of str is str", "type('S', (str,), {})('abc')"),
    ("subclass of dict is map", "__import__('collections').OrderedDict([('b', 1), ('a', 2)])"),
    ("subclass of tuple is array", "__import__('collections').namedtuple('P', 'x y')(1, 2)"),
    ("subclass of float is float", "type('F', (float,), {})(2.5)"),
    ("deep nesting at the limit", "__import__('functools').reduce(lambda a, _: [a], range(255), [])"),
    # key scheme 2 (issue 10)
    ("REDACTED is the secret marker", "REDACTED"),
    ("complex", "complex(1.5, -2)"),
    ("complex with a NaN part, one NaN", "complex(float('nan'), 0)"),
    ("Decimal keeps its exponent", "__import__('decimal').Decimal('1.10')"),
    ("Decimal 1.1 differs", "__import__('decimal').Decimal('1.1')"),
    ("UUID", "__import__('uuid').UUID(int=1)"),
    ("datetime naive", "__import__('datetime').datetime(2024, 5, 6, 7, 8, 9, 10)"),
    ("datetime with offset",
     "__import__('datetime').datetime(2024, 5, 6, 7, 8, 9, 10, "
     "tzinfo=__import__('datetime').timezone(__import__('datetime').timedelta(hours=2)))"),
    ("date", "__import__('datetime').date(2024, 5, 6)"),
    ("time", "__import__('datetime').time(7, 8, 9)"),
    ("timedelta", "__import__('datetime').timedelta(days=1, seconds=2, microseconds=3)"),
    ("PurePosixPath", "__import__('pathlib').PurePosixPath('/data/x.csv')"),
    ("PureWindowsPath", "__import__('pathlib').PureWindowsPath('C:/data/x.csv')"),
    ("Opaque passes through as its type", "Opaque('app.Point', [1, 2])"),
    ("numpy int64 array", "__import__('numpy').arange(6, dtype='<i8')"),
    ("numpy same bytes, other shape", "__import__('numpy').arange(6, dtype='<i8').reshape(2, 3)"),
    ("numpy same bytes, other dtype", "__import__('numpy').arange(6, dtype='<i8').view('<f8')"),
    ("numpy big-endian", "__import__('numpy').arange(3, dtype='>i4')"),
    ("numpy 0-d", "__import__('numpy').array(2.5)"),
    ("numpy float64 scalar", "__import__('numpy').float64(2.5)"),
]

REQUESTS = [
    ("minimal", "EvalRequest('op')"),
    ("args and kwargs", "EvalRequest('embed', ('some text',), {'model': 'mini-l6'}, version=1)"),
    ("args list same as tuple", "EvalRequest('embed', ['some text'], {'model': 'mini-l6'}, version=1)"),
    ("string version", "EvalRequest('embed', ('some text',), version='2024-05')"),
    ("capabilities sorted and de-duplicated",
     "EvalRequest('op', required_capabilities=['gpu', 'net', 'gpu'])"),
    ("mode", "EvalRequest('op', mode='explain')"),
    ("answer_limit and stream_buffer", "EvalRequest('op', answer_limit=10, stream_buffer=4)"),
    ("stream", "EvalRequest('op', stream=True)"),
    ("trace", "EvalRequest('op', trace=True)"),
    ("sharing recorded", "EvalRequest('op', sharing='recorded')"),
    ("sharing uncacheable", "EvalRequest('op', sharing='uncacheable')"),
    ("volatile kwargs do not change the key",
     "EvalRequest('op', volatile_kwargs={'verbose': True})"),
    ("consistency and deadline do not change the key",
     "EvalRequest('op', consistency='no-home', deadline=2.5)"),
    ("secret argument", "EvalRequest('fetch', (), {'token': Secret('s3cr3t')})"),
    ("secret argument, other value, same key", "EvalRequest('fetch', (), {'token': Secret('other')})"),
    ("every kind", "EvalRequest('op', (None, True, 1, -1, 2**70, 1.5, 'x', b'x', [1], {'a': 1}, {1}), "
                   "{'z': 0, 'a': 1})"),
]

ERRORS = [
    ("unsupported type", "Unkeyable()"),
    ("unsupported type in a path", "[1, 2, {'x': Unkeyable()}]"),
    ("unsupported type as a dict key", "{'a': {3: [0, {Unkeyable(): 1}]}}"),
    ("unsupported set member", "{'s': frozenset({Unkeyable()})}"),
    ("lone surrogate", "['ok', '\\ud800']"),
    ("lone surrogate as a key", "{'\\udfff': 1}"),
    ("NaN keys", "{'m': {nan: 1, float('nan'): 2}}"),
    ("NaN set members", "{nan, float('nan')}"),
    ("non-contiguous buffer", "{'b': memoryview(b'abcdef')[::2]}"),
    ("numpy object array", "__import__('numpy').array([None])"),
    ("too deep", "__import__('functools').reduce(lambda a, _: [a], range(256), [])"),
]

REQUEST_ERRORS = [
    ("missing op", "EvalRequest()"),
    ("op not a str", "EvalRequest(b'op')"),
    ("empty op", "EvalRequest('')"),
    ("args not a sequence", "EvalRequest('op', 'abc')"),
    ("kwargs not a mapping", "EvalRequest('op', (), [('a', 1)])"),
    ("kwargs key not a str", "EvalRequest('op', (), {1: 2})"),
    ("unkeyable arg", "EvalRequest('op', (1, {'x': [Unkeyable()]}))"),
    ("unkeyable kwarg", "EvalRequest('op', (), {'k': Unkeyable()})"),
    ("negative version", "EvalRequest('op', version=-1)"),
    ("bool version", "EvalRequest('op', version=True)"),
    ("float version", "EvalRequest('op', version=1.0)"),
    ("empty str version", "EvalRequest('op', version='')"),
    ("capabilities a single str", "EvalRequest('op', required_capabilities='gpu')"),
    ("capabilities not iterable", "EvalRequest('op', required_capabilities=5)"),
    ("capability not a str", "EvalRequest('op', required_capabilities=['gpu', 1])"),
    ("capability empty", "EvalRequest('op', required_capabilities=[''])"),
    ("mode upper case", "EvalRequest('op', mode='Eval')"),
    ("mode not a str", "EvalRequest('op', mode=1)"),
    ("answer_limit zero", "EvalRequest('op', answer_limit=0)"),
    ("answer_limit float", "EvalRequest('op', answer_limit=1.0)"),
    ("answer_limit bool", "EvalRequest('op', answer_limit=True)"),
    ("stream_buffer negative", "EvalRequest('op', stream_buffer=-5)"),
    ("stream not a bool", "EvalRequest('op', stream=1)"),
    ("trace not a bool", "EvalRequest('op', trace='yes')"),
    ("consistency unknown", "EvalRequest('op', consistency='eventual')"),
    ("deadline zero", "EvalRequest('op', deadline=0)"),
    ("deadline negative", "EvalRequest('op', deadline=-1.5)"),
    ("deadline inf", "EvalRequest('op', deadline=inf)"),
    ("deadline nan", "EvalRequest('op', deadline=nan)"),
    ("deadline past 1e9 s", "EvalRequest('op', deadline=1e12)"),
    ("deadline str", "EvalRequest('op', deadline='5')"),
    ("sharing unknown", "EvalRequest('op', sharing='shared')"),
    ("sharing not a str", "EvalRequest('op', sharing=1)"),
    ("volatile_kwargs not a mapping", "EvalRequest('op', volatile_kwargs=['verbose'])"),
    ("volatile_kwargs key not a str", "EvalRequest('op', volatile_kwargs={1: 2})"),
    ("a keyword in kwargs and volatile_kwargs",
     "EvalRequest('op', (), {'verbose': 1}, volatile_kwargs={'verbose': 2})"),
    ("unknown keyword", "EvalRequest('op', colour='red')"),
    ("too many positional", "EvalRequest('op', (), {}, 1)"),
]


def evaluate(expr):
    """The value of a vector's expression."""
    return eval(expr, dict(NAMESPACE))  # noqa: S307 - our own vectors


def _request_kwargs(req):
    """The fields of a request, as the reference encoder takes them."""
    return dict(op=req.op, args=req.args, kwargs=dict(req.kwargs), version=req.version,
                required_capabilities=req.required_capabilities, mode=req.mode,
                answer_limit=req.answer_limit, stream_buffer=req.stream_buffer,
                stream=req.stream, trace=req.trace, sharing=req.sharing)


def _error(expr, call):
    try:
        call(evaluate(expr)) if call else evaluate(expr)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)
    raise SystemExit("vector %r raised nothing" % expr)


def build():
    """Compute every vector, checking the C core against the reference."""
    values = []
    for name, expr in VALUES:
        v = evaluate(expr)
        c, ref = fabric.canonical_bytes(v), reference_encoder.encode(v)
        if c != ref:
            raise SystemExit("C and reference disagree on %s: %s vs %s" % (name, c.hex(), ref.hex()))
        values.append({"name": name, "python": expr, "hex": c.hex()})
    requests = []
    for name, expr in REQUESTS:
        req = evaluate(expr)
        ident = reference_encoder.identity_bytes(**_request_kwargs(req))
        if req.identity_bytes() != ident or req.key.digest != reference_encoder.key_digest(
                **_request_kwargs(req)):
            raise SystemExit("C and reference disagree on request %s" % name)
        requests.append({"name": name, "python": expr, "identity_hex": ident.hex(),
                         "key": str(req.key)})
    errors = []
    for name, expr in ERRORS:
        exc_type, message = _error(expr, fabric.canonical_bytes)
        errors.append({"name": name, "python": expr, "exception": exc_type,
                       "message": message})
    for name, expr in REQUEST_ERRORS:
        exc_type, message = _error(expr, None)
        errors.append({"name": name, "python": expr, "exception": exc_type,
                       "message": message})
    return {
        "scheme": fabric.KEY_SCHEME,
        "spec": "docs/spec/content-key.md",
        "note": "generated by tests/golden/make_content_keys.py; errors of values "
                "use canonical_bytes (root 'value')",
        "values": values,
        "requests": requests,
        "errors": errors,
    }


def main(argv):
    return write_or_check(OUT, build(), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
