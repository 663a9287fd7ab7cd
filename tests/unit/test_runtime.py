"""The runtime layer: a store's indexes follow every put and pop, and the one tracker of our
own writes tells an echo from somebody else's change, also when the echo comes before the
write's answer."""

from __future__ import annotations

import random

from meshless.runtime.store import Store, by_namespace
from meshless.runtime.writes import OwnWrites

Key = tuple[str, str]


def _accounts() -> Store[Key, str]:
    return Store(
        indexes={"namespace": by_namespace, "account": lambda k, v: [(k[0], v)]},
        counts={"ns": by_namespace},
    )


def test_indexes_follow_puts_and_pops() -> None:
    store = _accounts()
    store.put(("shop", "a"), "web")
    store.put(("shop", "b"), "web")
    store.put(("bank", "c"), "db")
    assert dict(store.indexed("account", ("shop", "web"))) == {
        ("shop", "a"): "web",
        ("shop", "b"): "web",
    }
    assert sorted(store.indexed("namespace", "shop")) == [("shop", "a"), ("shop", "b")]
    assert store.count("ns", "shop") == 2
    # A changed value moves between index entries.
    assert store.put(("shop", "a"), "db") == "web"
    assert list(store.indexed("account", ("shop", "web"))) == [("shop", "b")]
    assert list(store.indexed("account", ("shop", "db"))) == [("shop", "a")]
    assert store.count("ns", "shop") == 2
    # Popping the last object under a value leaves no empty entry behind.
    assert store.pop(("shop", "b")) == "web"
    assert store.indexed("account", ("shop", "web")) == {}
    assert not store.has("account", ("shop", "web"))
    assert store.pop(("shop", "b")) is None
    store.pop(("shop", "a"))
    assert sorted(store.index_values("namespace")) == ["bank"]  # type: ignore[type-var]
    assert list(store.counted("ns")) == ["bank"]
    assert store.count("ns", "shop") == 0
    assert len(store) == 1 and ("bank", "c") in store


def test_clear_empties_every_index() -> None:
    store = _accounts()
    store.put(("shop", "a"), "web")
    store.clear()
    assert len(store) == 0
    assert store.indexed("namespace", "shop") == {}
    assert store.count("ns", "shop") == 0


def test_indexes_agree_with_a_scan_after_any_sequence_of_puts_and_pops() -> None:
    """Against a second implementation: each index read equals a scan of everything held,
    whether a value holds one object (kept as its key) or several."""
    rng = random.Random(19)
    store = _accounts()
    held: dict[Key, str] = {}
    keys = [(ns, name) for ns in ("shop", "bank") for name in "abcdef"]
    for _ in range(3000):
        key = rng.choice(keys)
        if rng.random() < 0.3:
            assert store.pop(key) == held.pop(key, None)
        else:
            value = rng.choice(("web", "db", "cache"))
            assert store.put(key, value) == held.get(key)
            held[key] = value
        for ns in ("shop", "bank"):
            for account in ("web", "db", "cache"):
                scan = {k: v for k, v in held.items() if k[0] == ns and v == account}
                assert store.indexed("account", (ns, account)) == scan
                assert store.has("account", (ns, account)) == bool(scan)
            in_ns = {k: v for k, v in held.items() if k[0] == ns}
            assert store.indexed("namespace", ns) == in_ns
            assert store.count("ns", ns) == len(in_ns)
        assert sorted(store.index_values("account")) == sorted(  # type: ignore[type-var]
            {(k[0], v) for k, v in held.items()}
        )


def test_what_indexed_returns_is_not_changed_by_later_writes() -> None:
    store = _accounts()
    store.put(("shop", "a"), "web")
    seen = store.indexed("namespace", "shop")
    store.put(("shop", "b"), "web")
    store.put(("shop", "a"), "db")
    assert seen == {("shop", "a"): "web"}
    assert store.indexed("namespace", "shop") == {("shop", "a"): "db", ("shop", "b"): "web"}


def test_our_write_and_read_are_echoes_and_others_are_not() -> None:
    writes = OwnWrites()
    key = ("shop", "web-mtls")
    assert not writes.is_own("secrets", key, "5")
    writes.saw("secrets", key, "5")
    assert writes.is_own("secrets", key, "5")
    assert not writes.is_own("secrets", key, "6")
    assert not writes.is_own("secrets", key, "5", deleted=True)
    # Another kind with the same name is another object.
    assert not writes.is_own("workloadidentities/status", key, "5")
    writes.forget("secrets", key)
    assert not writes.knows("secrets", key)


def test_an_echo_before_the_answer_is_ours_and_a_change_meanwhile_races() -> None:
    writes = OwnWrites()
    key = ("shop", "web-mtls")
    raced: list[str] = []
    with writes.writing("secrets", key, lambda: raced.append("again")) as write:
        assert writes.is_own("secrets", key, "7")  # the echo, before the answer
        write.version = "7"
    assert not write.raced and raced == []
    assert writes.is_own("secrets", key, "7")

    with writes.writing("secrets", key, lambda: raced.append("again")) as write:
        assert writes.is_own("secrets", key, "8")  # somebody else's write, held meanwhile
        assert writes.is_own("secrets", key, "9")  # our echo
        write.version = "9"
    assert write.raced and raced == ["again"]


def test_a_failed_write_with_events_meanwhile_races() -> None:
    writes = OwnWrites()
    key = ("shop", "web-mtls")
    raced: list[bool] = []
    try:
        with writes.writing("secrets", key, lambda: raced.append(True)):
            writes.is_own("secrets", key, "4")
            raise RuntimeError("refused")
    except RuntimeError:
        pass
    assert raced == [True]
    assert not writes.knows("secrets", key)
