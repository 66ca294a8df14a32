"""The per-connection quota of engine requests and the per-key counts, on their own."""

from __future__ import annotations

import pytest

from app.errors import ClientError
from app.server.core.quota import KeyUsage, RequestQuota, key_id


def test_requests_beyond_the_running_limit_wait_and_start_in_order():
    quota = RequestQuota(max_running=2, max_waiting=5)
    started: list[int] = []
    tickets = [quota.admit(lambda i=i: started.append(i)) for i in range(5)]
    assert started == [0, 1] and quota.running == 2 and quota.waiting == 3
    tickets[1].done()
    assert started == [0, 1, 2]
    tickets[0].done()
    tickets[0].done()  # idempotent: frees one place only
    assert started == [0, 1, 2, 3] and quota.running == 2 and quota.waiting == 1


def test_a_cancelled_waiting_request_never_starts():
    quota = RequestQuota(max_running=1, max_waiting=5)
    started: list[str] = []
    first = quota.admit(lambda: started.append("first"))
    cancelled = quota.admit(lambda: started.append("cancelled"))
    quota.admit(lambda: started.append("last"))
    cancelled.done()
    assert quota.waiting == 1
    first.done()
    assert started == ["first", "last"]


def test_one_more_than_may_wait_is_refused():
    quota = RequestQuota(max_running=1, max_waiting=2)
    for _ in range(3):
        quota.admit(lambda: None)
    with pytest.raises(ClientError) as refused:
        quota.admit(lambda: None)
    assert refused.value.code == "too_many_requests"


def test_a_key_counts_requests_of_every_connection_until_done():
    key = KeyUsage(max_contexts=0, max_requests=3)
    one, two = RequestQuota(1, 10, key), RequestQuota(1, 10, key)
    tickets = [one.admit(lambda: None), one.admit(lambda: None), two.admit(lambda: None)]
    with pytest.raises(ClientError) as refused:
        two.admit(lambda: None)
    assert refused.value.code == "too_many_requests"
    one.key = None  # the connection let go of the key; its tickets still count where they were counted
    for ticket in tickets:
        ticket.done()
    assert key.requests == 0
    two.admit(lambda: None)


def test_a_key_caps_contexts_only_when_asked_to():
    KeyUsage(max_contexts=0, max_requests=0).check_context()  # 0: no cap
    capped = KeyUsage(max_contexts=1, max_requests=0)
    capped.contexts = 1
    with pytest.raises(ClientError) as refused:
        capped.check_context()
    assert refused.value.code == "too_many_contexts"


def test_key_ids_name_keys_without_revealing_them():
    assert key_id("secret") == key_id("secret") != key_id("other")
    assert "secret" not in key_id("secret") and len(key_id("secret")) == 16
