"""Memory kills on record: Ray's error names the actors it killed; the book in the Tune storage maps them to trials
and counts each trial's kills across resumes (a real search is killed for real in tests/system/test_memory_kill.py)."""

from __future__ import annotations

from ray.exceptions import OutOfMemoryError

from tune_ct.train.memory_kills import KillBook, memory_kill, record_kill

# The shape of Ray 2.60's message (shortened): the actors it killed, then those it only considered.
RAY_SAYS = """1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.2, ID: ab) was 7.37GB used / 23.54GB limit (0.31302)
OOM kill reason: Memory usage 7002124288B exceeded threshold of 6925677056B (27.4% of 25276194816B limit)
Ray killed 2 worker(s) based on the killing policy
Considered workers: [
Selected to kill: (Actor(aa01): job ID=01000000, task name=ImplicitFunc.__init__, pid=29814, actual memory used=3.89GB)
Selected to kill: (Actor(cc03): job ID=01000000, task name=tune_ct-system-metrics-x:SystemSink.__init__, pid=2)
(Actor(bb02): job ID=01000000, task name=ImplicitFunc.__init__, pid=29815, actual memory used=0.60GB)
]"""


def test_the_killed_trial_is_found_and_its_kills_counted_across_books(tmp_path):
    book = KillBook(str(tmp_path), "night")
    book.started("trial_a", "aa01")
    book.started("trial_b", "bb02")  # running too, but not killed
    assert record_kill(book, OutOfMemoryError(RAY_SAYS)) == ["trial_a"]
    assert record_kill(book, OutOfMemoryError(RAY_SAYS)) == ["trial_a"]
    again = KillBook(str(tmp_path), "night")  # a resumed driver reads the same records
    kills = again.kills("trial_a")
    assert len(kills) == 2 and kills[0].startswith("1 worker(s) were killed due to the node running low on memory")
    assert again.kills("trial_b") == [] and KillBook(str(tmp_path), "other").kills("trial_a") == []
    assert (tmp_path / "night" / "memory_kills" / "kills" / "trial_a.json").is_file()


def test_a_kill_of_no_known_trial_names_no_victim(tmp_path):
    book = KillBook(str(tmp_path), "night")
    book.started("trial_b", "bb02")
    assert record_kill(book, OutOfMemoryError(RAY_SAYS)) == []
    assert record_kill(book, OutOfMemoryError("some other wording")) == []


def test_the_memory_error_is_found_behind_the_error_tune_raises():
    oom = OutOfMemoryError(RAY_SAYS)
    try:
        try:
            raise oom
        except OutOfMemoryError as exc:
            raise RuntimeError(f"Caught unexpected exception: {exc}") from exc
    except RuntimeError as tune_error:
        assert memory_kill(tune_error) is oom
    assert memory_kill(RuntimeError("a trial's own bug")) is None
