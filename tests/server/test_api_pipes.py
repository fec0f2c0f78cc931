"""The engine process's side of several API processes' pipes (r1serve.engine.api_pipes), over real
multiprocessing pipes in one process: ids made unique per API process and mapped back, each
process's events and add count, the batch counted once, a stop that waits for the last one, and the
requests of one that went aborted. And the API side's share of the queue limit."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from r1serve.engine.api_pipes import ApiPipes
from r1serve.engine.async_engine import EngineClient, QueueFull
from r1serve.engine.core import EngineStats
from r1serve.engine.sequence import SamplingParams


def pipes(n: int) -> tuple[ApiPipes, list]:
    pairs = [mp.Pipe() for _ in range(n)]
    return ApiPipes([engine_end for _, engine_end in pairs]), [api_end for api_end, _ in pairs]


def add(request_id: int) -> tuple:
    return ("add", request_id, [1, 2, 3], SamplingParams(max_tokens=4), frozenset({0}))


def test_each_api_process_ids_are_unique_in_the_engine_and_its_events_come_back_to_it() -> None:
    engine, api = pipes(2)
    api[0].send(add(0))
    api[1].send(add(0))
    api[1].send(add(1))
    api[1].send(("abort", 0))
    commands = engine.receive(block=True)
    assert [(c[0], c[1]) for c in commands] == [("add", 0), ("add", 1), ("add", 3), ("abort", 1)]
    assert commands[0][2:] == add(0)[2:]  # the rest of the command as sent

    events = [(0, 7, None, None), (1, 8, "length", None), (3, None, None, "boom")]
    engine.emit(events, EngineStats(running=3, batch_size=3, num_added=3, emitted=12.5))
    kind, mine, stats = api[0].recv()
    assert (kind, mine, stats.num_added, stats.batch_size, stats.running) == (
        "step",
        [(0, 7, None, None)],
        1,
        3,
        3,
    )
    kind, mine, stats = api[1].recv()
    assert mine == [(0, 8, "length", None), (1, None, None, "boom")]
    assert (stats.num_added, stats.batch_size, stats.running) == (2, 0, 3)  # the batch is counted by 0 only
    # each API process times its tokens' delivery from the engine's own hand-over stamp
    assert stats.emitted == 12.5


def test_the_engine_stops_when_the_last_api_process_has_stopped_or_gone() -> None:
    engine, api = pipes(3)
    api[0].send(("stop",))
    api[1].close()  # gone without a goodbye
    assert engine.receive(block=True) == []
    assert engine.open == {2}
    engine.emit([], EngineStats())  # only to the one left
    assert api[2].recv()[0] == "step"
    with pytest.raises(EOFError):  # closed after its stop: its reader thread ends
        api[0].recv()
    api[2].send(add(5))
    api[2].send(("stop",))
    assert engine.receive(block=True) is None


def test_one_api_process_keeps_its_ids_and_stats() -> None:
    engine, (api,) = pipes(1)
    api.send(add(9))
    assert engine.receive(block=True)[0][1] == 9
    stats = EngineStats(batch_size=1, num_added=1)
    engine.emit([(9, 4, None, None)], stats)
    assert api.recv() == ("step", [(9, 4, None, None)], stats)


def test_an_api_process_that_goes_leaves_no_request_running_and_another_counts_the_batch() -> None:
    engine, api = pipes(3)
    for request_id in (0, 1, 2):
        api[1].send(add(request_id))
    assert [c[1] for c in engine.receive(block=True)] == [1, 4, 7]
    engine.emit([(4, 5, "stop", None)], EngineStats())  # its request 1 finished; 0 and 2 still run
    api[1].recv(), api[2].recv()
    api[0].send(("stop",))
    api[1].close()  # gone: a crash, or a forced exit with streams in flight
    assert engine.receive(block=True) == [("abort", 1), ("abort", 7)]  # nobody reads them any more
    engine.emit([], EngineStats(batch_size=7))
    assert api[2].recv()[2].batch_size == 7  # with 0 gone, the next counts the batch


class Recorded(EngineClient):
    """The API side's admission arithmetic with the commands kept here instead of sent to an engine."""

    max_model_len, num_blocks, block_size, max_num_seqs = 4096, 1024, 16, 4

    def __init__(self, api_servers: int) -> None:
        super().__init__(max_queue=10)
        self.api_servers = api_servers
        self.sent: list = []
        self.stats = EngineStats(running=4)  # every running slot taken: new requests wait

    def _send(self, command: tuple) -> None:
        self.sent.append(command)


def admitted(client: EngineClient) -> int:
    for n in range(100):
        try:
            client.add_request([1, 2, 3], SamplingParams(), frozenset())
        except QueueFull:
            return n
    return 100


def test_api_processes_share_the_queue_limit() -> None:
    assert admitted(Recorded(api_servers=1)) == 10
    # two processes, each before the engine has seen any of them: together about max_queue, not twice it
    assert [admitted(Recorded(api_servers=2)) for _ in range(2)] == [5, 5]
    shared = Recorded(api_servers=2)
    shared.stats = EngineStats(running=4, waiting=6)  # the engine already holds 6 waiting, from either
    assert admitted(shared) == 2
