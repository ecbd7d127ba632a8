"""fab.map and fab.amap: many requests at once, results in order."""

import asyncio
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import fabric

ROOT = Path(__file__).parent.parent

reg = fabric.OpRegistry()


@fabric.op("map.square", registry=reg)
def square(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x * x


@fabric.op("map.chars", registry=reg)
def chars(text: str):
    yield from text


@fabric.op("map.adouble", registry=reg)
async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


class _Gate:
    """An op whose calls all wait until ``n`` of them are running at once:
    a map that did not run them concurrently would never open the gate."""

    def __init__(self, n):
        self.barrier = threading.Barrier(n, timeout=30)
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.barrier.wait()
        finally:
            with self.lock:
                self.running -= 1
        return x + 100


def test_map_gives_values_in_order():
    with fabric.LocalFabric(reg) as fab:
        assert fab.map(square, range(50)) == [x * x for x in range(50)]
        assert fab.map("map.square", [3, 1, 2]) == [9, 1, 4]
        assert fab.map(square, []) == []


def test_map_of_a_stream_op_and_an_async_op():
    with fabric.LocalFabric(reg) as fab:
        assert fab.map(chars, ["ab", "", "xyz"]) == [["a", "b"], [], ["x", "y", "z"]]
        assert fab.map(adouble, [1, 2, 3]) == [2, 4, 6]


def test_map_runs_items_concurrently_up_to_the_bound():
    local = fabric.OpRegistry()
    gate = _Gate(4)
    gated = fabric.op("map.gated", registry=local)(gate)
    with fabric.LocalFabric(local) as fab:
        # 8 items through 4 slots: two rounds of 4 meet at the barrier.
        assert fab.map(gated, range(8), concurrency=4) == [x + 100 for x in range(8)]
    assert gate.peak == 4


def test_map_never_exceeds_concurrency():
    local = fabric.OpRegistry()
    seen = {"running": 0, "peak": 0}
    lock = threading.Lock()

    @fabric.op("map.counted", registry=local)
    def counted(x: int) -> int:
        with lock:
            seen["running"] += 1
            seen["peak"] = max(seen["peak"], seen["running"])
        with lock:
            seen["running"] -= 1
        return x

    with fabric.LocalFabric(local) as fab:
        assert fab.map(counted, range(40), concurrency=2) == list(range(40))
    assert 1 <= seen["peak"] <= 2


def test_return_exceptions_puts_errors_in_place():
    with fabric.LocalFabric(reg) as fab:
        out = fab.map(square, [1, -2, 3, -4], return_exceptions=True)
    assert out[0] == 1 and out[2] == 9
    assert isinstance(out[1], ValueError) and "negative: -2" in str(out[1])
    assert isinstance(out[3], ValueError) and "negative: -4" in str(out[3])


def test_first_error_is_raised_after_every_item_ran():
    ran = []
    local = fabric.OpRegistry()

    @fabric.op("map.tracked", registry=local)
    def tracked(x: int) -> int:
        ran.append(x)
        if x in (3, 7):
            raise KeyError(x)
        return x

    with fabric.LocalFabric(local) as fab:
        with pytest.raises(KeyError) as info:
            fab.map(tracked, range(10), concurrency=3)
    assert sorted(ran) == list(range(10))  # the rest were done
    assert info.value.args == (3,)  # the first failing item, in order
    assert any("item 3" in n and "2 of 10" in n for n in info.value.__notes__)


def test_an_item_that_cannot_make_a_request_is_that_items_error():
    with fabric.LocalFabric(reg) as fab:
        out = fab.map(square, [2, object(), 3], return_exceptions=True)
        assert out[0] == 4 and out[2] == 9
        assert isinstance(out[1], TypeError)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_concurrency_is_refused(bad):
    with fabric.LocalFabric(reg) as fab:
        with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
            fab.map(square, [1], concurrency=bad)


def test_map_on_a_content_addressed_fabric_records_and_hits(cassette_factory):
    home = fabric.LocalFabric(reg)
    fab = fabric.ContentAddressedFabric("n", cassette_factory("m"), home=home)
    try:
        assert fab.map(square, range(20), concurrency=4) == [x * x for x in range(20)]
        assert fab.stats()["home_computes"] == 20
        assert fab.map(square, range(20)) == [x * x for x in range(20)]
        assert fab.stats()["local_hits"] == 20
        assert fab.map(chars, ["hi"]) == [["h", "i"]]
        assert fab.map(chars, ["hi"]) == [["h", "i"]]  # replayed from the cassette
    finally:
        fab.close()
        home.close()


def test_map_draws_its_bar_only_when_asked(capfd):
    with fabric.LocalFabric(reg) as fab:
        fab.map(square, range(5))
        assert capfd.readouterr().err == ""  # stderr is no terminal: nothing
        fab.map(square, range(5), progress=True)
    err = capfd.readouterr().err
    assert "map map.square" in err and "5" in err


def test_amap_gives_values_in_order_with_errors_in_place():
    async def main():
        async with fabric.LocalFabric(reg) as fab:
            a = await fab.amap(square, range(30), concurrency=5)
            b = await fab.amap(adouble, [1, 2])
            c = await fab.amap(chars, ["ab"])
            d = await fab.amap(square, [2, -1], return_exceptions=True)
            with pytest.raises(ValueError, match="negative: -1") as info:
                await fab.amap(square, [-1, 2, -3])
            return a, b, c, d, info.value

    a, b, c, d, err = asyncio.run(main())
    assert a == [x * x for x in range(30)]
    assert b == [2, 4] and c == [["a", "b"]]
    assert d[0] == 4 and isinstance(d[1], ValueError)
    assert any("item 0" in n for n in err.__notes__)


def test_amap_concurrency_reaches_the_bound():
    gate = _Gate(3)
    local = fabric.OpRegistry()
    gated = fabric.op("map.agated", registry=local)(gate)

    async def main():
        async with fabric.LocalFabric(local) as fab:
            return await fab.amap(gated, range(6), concurrency=3)

    assert asyncio.run(main()) == [x + 100 for x in range(6)]
    assert gate.peak == 3


TYPED = '''
from typing import Iterator
import fabric

@fabric.op("t.sq")
def sq(x: int) -> int:
    return x * x

@fabric.op("t.words")
def words(text: str) -> Iterator[str]:
    yield from text.split()

@fabric.op("t.alen")
async def alen(text: str) -> int:
    return len(text)

async def main(fab: fabric.LocalFabric) -> None:
    reveal_type(await fab.amap(sq, [1]))  # list[int]

def use(fab: fabric.LocalFabric) -> None:
    reveal_type(fab.map(sq, [1, 2]))  # list[int]
    reveal_type(fab.map(sq, [1], return_exceptions=True))  # list[int | Exception]
    reveal_type(fab.map(words, ["a b"]))  # list[list[str]]
    reveal_type(fab.map(alen, ["a"]))  # list[int]
    fab.map(sq, ["not an int"])  # E
'''


def test_map_is_typed_like_call(tmp_path):
    pytest.importorskip("mypy")
    path = tmp_path / "typed_map.py"
    path.write_text(TYPED)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MYPYPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--no-incremental", "--config-file", os.devnull, str(path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    lines = TYPED.splitlines()
    revealed, errors = {}, set()
    for line in proc.stdout.splitlines():
        m = re.match(r".*typed_map\.py:(\d+): note: Revealed type is \"(.*)\"$", line)
        if m:
            revealed[int(m.group(1))] = m.group(2)
        m = re.match(r".*typed_map\.py:(\d+): error:", line)
        if m:
            errors.add(int(m.group(1)))
    expected = {n: t.split("# ", 1)[1] for n, t in enumerate(lines, 1) if "reveal_type(" in t}
    assert revealed == expected, proc.stdout
    assert errors == {n for n, t in enumerate(lines, 1) if t.endswith("# E")}, proc.stdout
