"""asyncio helpers: a cancelled caller stays cancelled."""

from __future__ import annotations

import asyncio

from etcdha.aio import cancel_and_wait


async def test_a_caller_cancelled_while_it_waits_for_a_task_to_end_stays_cancelled() -> None:
    # The agent's HA loop, giving a group up, waits for the group's start task to
    # end; a TaskGroup stopping the agent cancels the loop meanwhile. Had the wait
    # swallowed that, the loop would run on and the agent would never stop.
    async def slow_to_cancel() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # a clean-up that takes a moment
            raise

    ran_on = asyncio.Event()

    async def caller() -> None:
        task = asyncio.create_task(slow_to_cancel())
        await asyncio.sleep(0)
        await cancel_and_wait(task)
        ran_on.set()
        await asyncio.sleep(10)

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.01)  # the caller now waits for the task to end
    outer.cancel()
    await asyncio.wait([outer], timeout=2)
    assert outer.cancelled()
    assert not ran_on.is_set()


async def test_the_task_is_cancelled_and_its_end_awaited() -> None:
    ended = asyncio.Event()

    async def task_body() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            ended.set()

    task = asyncio.create_task(task_body())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and ended.is_set()
