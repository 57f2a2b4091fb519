"""Which Redis maxmemory-policy may evict the queue, and what an operator is told.

Probe: Redis under ``allkeys-lru`` evicted the whole queue under memory pressure; `mammo
status --health` said "reachable", queue depth 0, nothing lost, and exited 0, and `mammo
recover` re-sent nothing for 600 s. ``allkeys-*`` evicts any key; ``volatile-*`` only keys
with a TTL, which the queue's lists and kombu's unacked hash and index do not have
(tests/integration/test_broker_evicts.py checks that on a real Redis).
"""

from __future__ import annotations

import pytest

from shared.queue import BrokerEviction, eviction_of


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_an_allkeys_policy_evicts_the_queue_and_says_what_to_set(policy: str) -> None:
    eviction = eviction_of({"maxmemory_policy": policy}, {"evicted_keys": 0})
    assert eviction == BrokerEviction(policy, 0) and eviction.evicts_queues
    assert eviction.warning() == (f"Redis evicts keys (maxmemory-policy {policy}): queued "
                                  "messages can vanish; set maxmemory-policy noeviction")


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru", "volatile-lfu",
                                    "volatile-random", "volatile-ttl"])
def test_noeviction_and_volatile_policies_never_evict_the_queue(policy: str) -> None:
    eviction = eviction_of({"maxmemory_policy": policy}, {"evicted_keys": 0})
    assert not eviction.evicts_queues and eviction.warning() is None


def test_evicted_keys_are_counted_and_recover_is_named() -> None:
    evicting = eviction_of({"maxmemory_policy": "allkeys-lru"}, {"evicted_keys": 1234})
    assert evicting.evicted_keys == 1234
    assert evicting.warning() == (
        "Redis evicts keys (maxmemory-policy allkeys-lru): queued messages can vanish; set "
        "maxmemory-policy noeviction; it has evicted 1234 key(s) since it started (INFO stats "
        "evicted_keys): `mammo recover --older-than 0` re-sends the messages of images still "
        "queued")
    # The policy fixed since: the count stays until a restart, and messages may be gone.
    fixed = eviction_of({"maxmemory_policy": "noeviction"}, {"evicted_keys": 1234})
    assert not fixed.evicts_queues
    assert "under an earlier maxmemory-policy (now noeviction)" in str(fixed.warning())
    assert "`mammo recover --older-than 0`" in str(fixed.warning())
    # Under volatile-*, evicted keys had a TTL: never the queue's, nothing to say.
    assert eviction_of({"maxmemory_policy": "volatile-lru"},
                       {"evicted_keys": 1234}).warning() is None
