"""Rich display in notebooks: _repr_html_ of EvalRequest, Secret, EvalCassette and the streams."""

import html.parser

import pytest

import fabric


class _Tags(html.parser.HTMLParser):
    """The tags of an HTML fragment and its text (it must parse and nest)."""

    def __init__(self, text):
        super().__init__()
        self.open, self.tags, self.text = [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag not in ("br", "hr", "img"):  # void elements have no end tag
            self.open.append(tag)
        self.tags.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open)
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(text):
    assert isinstance(text, str)
    tags = _Tags(text)
    assert tags.open == [], f"unclosed tags {tags.open} in {text!r}"
    return tags, "".join(tags.text)


def test_request_html_escapes_arguments_and_shows_the_key():
    r = fabric.EvalRequest("add", ("<script>alert(1)</script>", 2), {"q": '"&\''})
    tags, text = _parse(r._repr_html_())
    assert "script" not in tags.tags  # escaped, not markup
    assert "<script>alert(1)</script>" in text  # the text reads as the argument
    assert str(r.key) in text
    assert "add" in text


def test_request_html_is_bounded_whatever_the_arguments():
    small = fabric.EvalRequest("f", (list(range(10)),))._repr_html_()
    big = fabric.EvalRequest("f", (list(range(1_000_000)),))._repr_html_()
    assert len(big) < 2 * len(small) + 400
    assert "999999" not in big


def test_request_html_redacts_secrets():
    r = fabric.EvalRequest("login", (fabric.Secret("hunter2-value"),),
                           {"token": fabric.Secret("tok-value", commit=False)})
    out = r._repr_html_()
    assert "hunter2-value" not in out and "tok-value" not in out
    _, text = _parse(out)
    assert "Secret('***')" in text


def test_secret_html_is_redacted():
    s = fabric.Secret("the-password<b>")
    out = s._repr_html_()
    assert "the-password" not in out
    _, text = _parse(out)
    assert text == "Secret('***')"


def test_cassette_html_shows_stats_not_keys(cassette_factory):
    c = cassette_factory("shown")
    reqs = [fabric.EvalRequest("sq", (i,)) for i in range(200)]
    for r in reqs:
        c.record(r.key, r.args[0] ** 2)
    out = c._repr_html_()
    tags, text = _parse(out)
    assert "table" in tags.tags
    stats = c.stats()
    assert c.path in text
    assert f"keys{stats['keys']}" in text.replace(" ", "")
    assert f"records{stats['records']}" in text.replace(" ", "")
    assert not any(r.key.hex[:12] in out for r in reqs)  # never lists keys
    small = cassette_factory("small")
    small.record(reqs[0].key, 0)
    # The same rows whatever the size: only the numbers (and the path) differ.
    assert abs(len(out) - len(small._repr_html_())) < 40


def test_cassette_html_of_a_closed_cassette(cassette_factory):
    c = cassette_factory("closed")
    c.close()
    _, text = _parse(c._repr_html_())
    assert "closed" in text and c.path in text


@pytest.mark.parametrize("obj", ["request", "secret"])
def test_html_of_every_type_is_str(obj):
    o = fabric.EvalRequest("f") if obj == "request" else fabric.Secret(1)
    assert type(o._repr_html_()) is str


def test_stream_reprs_say_their_state_source_items_and_key():
    import asyncio

    import node_ops
    f = fabric.LocalFabric()
    req = node_ops.count.request(3)
    s = f.stream(req)
    head = f"source={s.source!r}, items=0, diagnostics=0, key={str(req.key)[:19]}...)"
    assert repr(s) == "EvalStream(open, " + head
    assert list(s) == [0, 1, 2]
    assert repr(s).startswith("EvalStream(done, ") and "items=3," in repr(s)
    assert _parse(s._repr_html_())[1] == repr(s)

    async def in_async():
        async with f.astream(req) as a:
            assert repr(a) == "AsyncEvalStream(open, " + head.replace(
                f"source={s.source!r}", f"source={a.source!r}")
            assert [x async for x in a] == [0, 1, 2]
            assert repr(a).startswith("AsyncEvalStream(done, ") and "items=3," in repr(a)
            assert _parse(a._repr_html_())[1] == repr(a)

    asyncio.run(in_async())
