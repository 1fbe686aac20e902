import threading
import time

import pytest

from bloodviz.modelcache import ModelCache


def loader(value, nbytes, calls=None):
    def load():
        if calls is not None:
            calls.append(value)
        return value, nbytes

    return load


def test_least_recently_used_models_go_first_once_over_budget():
    evictions = []
    cache = ModelCache(100, on_evict=lambda: evictions.append(1))
    cache.get("a", loader("A", 40))
    cache.get("b", loader("B", 40))
    assert cache.get("a", loader("never", 1)) == "A"  # a hit: a is now the most recent
    cache.get("c", loader("C", 40))  # 120 bytes: b, the least recent, goes
    assert cache.keys() == ["a", "c"]
    assert cache.nbytes == 80
    assert evictions == [1]


def test_room_is_made_before_a_load_whose_size_is_known():
    cache = ModelCache(100)
    cache.get("a", loader("A", 40))
    cache.get("b", loader("B", 40))
    held_while_loading = []

    def load_c():
        held_while_loading.append(cache.keys())
        return "C", 50

    cache.get("c", load_c, expected_bytes=50)
    assert held_while_loading == [["b"]]  # a went before c was built, not after
    assert cache.keys() == ["b", "c"]


def test_a_model_over_budget_alone_is_kept_until_the_next():
    cache = ModelCache(100)
    cache.get("small", loader("S", 10))
    assert cache.get("huge", loader("H", 250)) == "H"
    assert cache.keys() == ["huge"]
    cache.get("next", loader("N", 10))
    assert cache.keys() == ["next"]


def test_sessions_asking_for_the_same_model_load_it_once():
    calls = []
    started = threading.Event()

    def slow_load():
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return object(), 10

    cache = ModelCache(100)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("m", slow_load))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert len({id(r) for r in results}) == 1


def test_a_failed_load_is_not_cached_and_can_be_retried():
    cache = ModelCache(100)

    def broken():
        raise RuntimeError("damaged weights")

    with pytest.raises(RuntimeError, match="damaged"):
        cache.get("m", broken)
    assert "m" not in cache
    assert cache.get("m", loader("M", 5)) == "M"


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        ModelCache(0)
