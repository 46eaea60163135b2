"""The producer's ledger, without a database or a loop: a hypothesis state machine drives
random job lives (start, linger, end, thread done, take, written, put back, refuse,
retry, abandon) and checks after every step that each rule the producer relies on holds."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kerrera.queue.ledger import RELEASE, Held, Ledger, Phase

OUTCOMES: list[Any] = [
    None,
    RELEASE,
    {"id": 0, "attempt": 0, "state": "retryable", "delay": 1.0, "error": {"error": "e"}},
]


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.next_id = 1
        self.entries: list[Held] = []  # every entry ever started
        self.written: set[int] = set()  # ids whose ack was written
        self.in_flight: list[Held] = []  # the batch being written now
        self.abandoned = False
        self.now = 0.0

    def _live(self, pred: Any) -> list[Held]:
        return [e for e in self.entries if e.job_id not in self.written and pred(e)]

    @rule()
    def start(self) -> None:
        self.entries.append(self.ledger.start(self.next_id, 1))
        self.next_id += 1

    @rule(pick=st.integers(0, 1000))
    def linger(self, pick: int) -> None:
        running = self._live(lambda e: e.body)
        if running:
            self.ledger.linger(running[pick % len(running)])

    @rule(pick=st.integers(0, 1000), outcome=st.sampled_from(OUTCOMES))
    def end(self, pick: int, outcome: Any) -> None:
        running = self._live(lambda e: e.body)
        if running:
            self.ledger.end(running[pick % len(running)], outcome)

    @rule(pick=st.integers(0, 1000))
    def thread_done(self, pick: int) -> None:
        threads = self._live(lambda e: e.thread)
        if threads:
            self.ledger.thread_done(threads[pick % len(threads)])

    @precondition(lambda self: not self.in_flight)
    @rule()
    def take(self) -> None:
        batch, taken = self.ledger.take("p")
        assert batch.producer == "p"
        assert len(batch) == len(taken)
        for entry in taken:
            # An ack is written only once its thread is free, or the process exits.
            assert not entry.thread
            assert not entry.body and entry.decided
        self.in_flight = taken

    @precondition(lambda self: bool(self.in_flight))
    @rule()
    def written_ok(self) -> None:
        self.ledger.written(self.in_flight)
        self.written.update(e.job_id for e in self.in_flight)
        self.in_flight = []

    @precondition(lambda self: bool(self.in_flight))
    @rule()
    def connection_lost(self) -> None:
        self.ledger.put_back(self.in_flight)
        self.in_flight = []

    @precondition(lambda self: bool(self.in_flight))
    @rule(delay=st.floats(0, 10))
    def refused(self, delay: float) -> None:
        for entry in self.in_flight:
            self.ledger.refuse(entry, self.now + delay)
        self.in_flight = []

    @rule(step=st.floats(0, 5))
    def time_passes(self, step: float) -> None:
        self.now += step

    @precondition(lambda self: not self.in_flight)
    @rule(succeed=st.booleans())
    def retry_refused(self, succeed: bool) -> None:
        for entry in self.ledger.due(self.now):
            assert entry.retry_at <= self.now
            batch = self.ledger.take_one(entry, "p")
            assert len(batch) == 1
            if succeed:
                self.ledger.written([entry])
                self.written.add(entry.job_id)
            else:
                self.ledger.refuse(entry, self.now + 1)

    @rule()
    def abandon(self) -> None:
        self.ledger.abandon_threads()
        self.abandoned = True

    @invariant()
    def nothing_unwritten_is_let_go(self) -> None:
        # Every job whose ack is not written is held, so no reclaim or release touches it.
        unwritten = {e.job_id for e in self.entries} - self.written
        assert set(self.ledger.held_ids()) == unwritten
        assert len(self.ledger) == len(unwritten)

    @invariant()
    def busy_counts_bodies_and_threads(self) -> None:
        live = self._live(lambda e: e.body or e.thread)
        assert self.ledger.busy == len(live)
        assert self.ledger.running_ids() == sorted(e.job_id for e in live if e.body)

    @invariant()
    def every_decided_ack_has_a_way_out(self) -> None:
        for entry in self._live(lambda e: True):
            phase = entry.phase
            if entry.body:
                assert phase is Phase.RUNNING
            elif entry.thread:
                assert phase is Phase.LINGERING and not entry.queued
                assert not self.abandoned
            else:
                # queued for the next cycle, being written, or waiting for its retry
                assert entry.queued or entry.in_flight or entry.refused
                assert phase in (Phase.ACK_PENDING, Phase.ACK_REFUSED)

    @invariant()
    def settled_means_nothing_left_to_write(self) -> None:
        if self.ledger.settled(wait_threads=True):
            assert not self._live(lambda e: e.body or e.thread or e.queued or e.in_flight)


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLedger = LedgerMachine.TestCase


def test_a_batch_groups_outcomes_for_the_ack_statement() -> None:
    ledger = Ledger()
    for job_id, outcome in enumerate(OUTCOMES, 1):
        ledger.end(ledger.start(job_id, 2), outcome)
    batch, taken = ledger.take("owner")
    assert [e.job_id for e in taken] == [1, 2, 3]
    assert (batch.done_ids, batch.done_attempts) == ([1], [2])
    assert (batch.released_ids, batch.released_attempts) == ([2], [2])
    assert [a["state"] for a in batch.outcomes] == ["retryable"]
    assert batch.producer == "owner"


def test_a_lingering_thread_holds_its_slot_and_its_ack() -> None:
    ledger = Ledger()
    entry = ledger.start(7, 1)
    ledger.linger(entry)
    ledger.end(entry, RELEASE)
    assert ledger.busy == 1 and ledger.in_phase(Phase.LINGERING) == [7]
    assert len(ledger.take("p")[1]) == 0
    assert not ledger.settled(wait_threads=True)
    assert ledger.settled(wait_threads=False)  # (left executing for the lifeline)
    ledger.thread_done(entry)
    assert ledger.busy == 0 and [e.job_id for e in ledger.take("p")[1]] == [7]


def test_a_job_fetched_again_while_a_stale_run_is_held_is_accounted_apart() -> None:
    ledger = Ledger()
    stale = ledger.start(5, 1)
    ledger.linger(stale)
    ledger.end(stale, None)
    fresh = ledger.start(5, 2)
    assert ledger.busy == 2 and ledger.held_ids() == [5]
    ledger.end(fresh, None)
    _batch, taken = ledger.take("p")
    assert taken == [fresh]
    ledger.written(taken)
    assert ledger.held_ids() == [5]  # the stale run still holds it
    ledger.thread_done(stale)
    ledger.written(ledger.take("p")[1])
    assert ledger.held_ids() == [] and ledger.busy == 0
