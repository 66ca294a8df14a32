"""The scheduler alone: admission (fairness across clients, then urgency), decode ordering, postprocessing."""

from __future__ import annotations

import pytest

from app.engine.config import EngineConfig
from app.engine.scheduler import Scheduler
from app.engine.types import SAMPLE_RATE, EngineRequest, GenerationSettings

STOP = 99
CONFIG = EngineConfig(first_audio_tokens=10, audio_chunk_tokens=20, max_new_tokens=1000)


def request(request_id: str, client: str = "", *, deadline: float = 100.0, priority: int = 0, first: bool = False,
            arrival: float = 0.0, max_new_tokens: int = 1000, fixed_tokens: int | None = None) -> EngineRequest:
    return EngineRequest(request_id, "Some text.", None, GenerationSettings(max_new_tokens=max_new_tokens),
                         priority=priority, deadline=deadline, first_in_context=first, arrival=arrival,
                         client=client, fixed_tokens=fixed_tokens)


def scheduler(max_running: int = 8, config: EngineConfig = CONFIG) -> Scheduler:
    return Scheduler(config, max_running=max_running, stop_token=STOP, lookahead=3)


def ids(sequences) -> list[str]:
    return [s.request_id for s in sequences]


# ---- ordering ---------------------------------------------------------------------------------------------


def test_earliest_deadline_goes_first():
    s = scheduler()
    for name, deadline in (("late", 30.0), ("soon", 10.0), ("middle", 20.0)):
        s.add(request(name, deadline=deadline))
    assert ids(s.admit(3)) == ["soon", "middle", "late"]
    assert ids(s.decode_batch()) == ["soon", "middle", "late"]


def test_a_replys_first_chunk_outranks_an_earlier_deadline_until_it_has_audio():
    s = scheduler()
    s.add(request("later-chunk", deadline=1.0))
    s.add(request("first-chunk", deadline=50.0, first=True))
    assert ids(s.admit(2)) == ["first-chunk", "later-chunk"]
    first = s.running[0]
    first.tokens = [1] * 13
    s.audio_emitted(first, 60 * SAMPLE_RATE)  # once it plays, it is ordered by its dry time (50 + 60 s)
    assert ids(s.decode_batch()) == ["later-chunk", "first-chunk"]


def test_priority_outranks_first_chunk_and_deadline():
    s = scheduler()
    s.add(request("urgent", deadline=1.0, first=True))
    s.add(request("important", deadline=90.0, priority=2))
    assert ids(s.admit(1)) == ["important"]


def test_produced_audio_pushes_the_dry_time_back():
    s = scheduler()
    s.add(request("a", deadline=10.0))
    s.add(request("b", deadline=12.0))
    a, _ = s.admit(2)
    s.audio_emitted(a, 5 * SAMPLE_RATE)  # a's listener now has audio until 15 s
    assert ids(s.decode_batch()) == ["b", "a"]


def test_admission_respects_capacity_and_max_running():
    s = scheduler(max_running=2)
    for name in "abc":
        s.add(request(name))
    assert len(s.admit(capacity=1)) == 1
    assert len(s.admit(capacity=5)) == 1  # max_running caps it
    assert s.admit(capacity=5) == [] and s.queue_depth == 1


# ---- fairness ---------------------------------------------------------------------------------------------


def test_a_second_client_gets_a_row_at_once_when_rows_are_scarce():
    s = scheduler(max_running=2)
    for i in range(4):  # client A queued first, each more urgent than B's
        s.add(request(f"a{i}", "A", deadline=float(i)))
    s.add(request("b0", "B", deadline=50.0))
    assert sorted(ids(s.admit(2))) == ["a0", "b0"]


def test_negative_control_one_client_takes_every_row_by_urgency():
    s = scheduler(max_running=2)
    for i in range(4):
        s.add(request(f"a{i}", "A", deadline=float(i)))
    s.add(request("b0", "A", deadline=50.0))  # the same client: plain urgency order
    assert ids(s.admit(2)) == ["a0", "a1"]


def test_a_freed_row_goes_to_the_client_running_fewest():
    s = scheduler(max_running=3)
    for i in range(3):
        s.add(request(f"a{i}", "A", deadline=float(i)))
    assert ids(s.admit(3)) == ["a0", "a1", "a2"]
    s.add(request("a3", "A", deadline=0.0))
    s.add(request("b0", "B", deadline=90.0))
    finished = s.running[0]
    finished.finished = True
    s.audio_emitted(finished, 0)
    assert ids(s.admit(1)) == ["b0"]


def test_rows_are_shared_round_robin_across_clients():
    s = scheduler(max_running=6)
    for client, count in (("A", 5), ("B", 5), ("C", 1)):
        for i in range(count):
            s.add(request(f"{client}{i}", client, deadline=float(i)))
    admitted = ids(s.admit(6))
    assert sorted(name[0] for name in admitted) == ["A", "A", "A", "B", "B", "C"]


def test_urgency_orders_requests_within_a_client_and_between_equal_clients():
    s = scheduler(max_running=3)
    s.add(request("a-late", "A", deadline=40.0))
    s.add(request("a-first", "A", deadline=60.0, first=True))
    s.add(request("a-important", "A", deadline=90.0, priority=1))
    s.add(request("b-soon", "B", deadline=5.0))
    s.add(request("b-later", "B", deadline=6.0))
    # Equal load: the client with the more urgent head goes first (A's priority 1), then alternate.
    assert ids(s.admit(3)) == ["a-important", "b-soon", "a-first"]


def test_admission_limited_to_some_requests():
    s = scheduler()
    s.add(request("a"))
    s.add(request("b"))
    assert ids(s.admit(5, only={"b"})) == ["b"] and ids(s.waiting) == ["a"]
    assert ids(s.decode_batch(only={"b"})) == ["b"]


# ---- postprocessing ---------------------------------------------------------------------------------------


def admitted(s: Scheduler, req: EngineRequest):
    s.add(req)
    (sequence,) = s.admit(1)
    return sequence


def feed(s: Scheduler, sequence, tokens: list[int]) -> None:
    for token in tokens:
        sequence.unsynced += 1
        s.postprocess(sequence, token)


def test_stop_token_finishes_without_being_kept_and_later_tokens_are_dropped():
    s = scheduler()
    sequence = admitted(s, request("a"))
    feed(s, sequence, [5, 6, STOP, 7])
    assert sequence.finished and sequence.tokens == [5, 6] and sequence.unsynced == 0


def test_token_limit_is_the_smaller_of_request_server_and_context_room():
    s = scheduler(config=EngineConfig(max_new_tokens=8))
    sequence = admitted(s, request("a", max_new_tokens=20))
    assert sequence.token_limit == 8
    s.limit_tokens(sequence, room=5)
    feed(s, sequence, [1, 2, 3, 4])
    assert not sequence.finished
    feed(s, sequence, [5])
    assert sequence.finished and len(sequence.tokens) == 5


def test_fixed_tokens_ignore_the_stop_token_and_the_request_cap():
    s = scheduler()
    sequence = admitted(s, request("a", max_new_tokens=2, fixed_tokens=4))
    feed(s, sequence, [STOP, STOP, 1])
    assert not sequence.finished
    feed(s, sequence, [STOP])
    assert sequence.finished and sequence.tokens == [STOP, STOP, 1, STOP]


@pytest.mark.parametrize("per_char, expected", [(0.0, None), (2.0, 20), (1000.0, 4000)])
def test_synthetic_tokens_per_char_fixes_lengths_from_the_text(per_char, expected):
    config = EngineConfig(synthetic_tokens_per_char=per_char)
    assert config.fixed_tokens(request("a")) == expected  # "Some text." is 10 characters; 4000 at most


def test_due_for_audio_after_the_first_chunk_and_lookahead_then_every_chunk():
    s = scheduler()
    sequence = admitted(s, request("a"))
    assert sequence.next_audio_at == 10 + 3
    feed(s, sequence, [1] * 12)
    assert s.due_for_audio([sequence]) == [] and not s.needs_tokens([sequence])
    sequence.unsynced = 1  # sampled on the device, not read back: time to read tokens back
    assert s.needs_tokens([sequence])
    sequence.unsynced = 0
    feed(s, sequence, [1])
    assert s.due_for_audio([sequence]) == [sequence]
    s.audio_emitted(sequence, 960)
    assert sequence.next_audio_at == 13 + 20 and s.due_for_audio([sequence]) == []


def test_a_finished_sequence_is_due_and_leaves_running_with_its_last_audio():
    s = scheduler()
    sequence = admitted(s, request("a"))
    feed(s, sequence, [1, STOP])
    assert s.due_for_audio([sequence]) == [sequence]
    s.audio_emitted(sequence, 960)
    assert not s.has_unfinished()


def test_the_request_is_never_modified():
    req = request("a", max_new_tokens=3)
    before = repr(req)
    s = scheduler(config=EngineConfig(synthetic_tokens_per_char=1.0))
    sequence = admitted(s, req)
    feed(s, sequence, [1] * 10)
    s.audio_emitted(sequence, 100)
    assert repr(req) == before
