"""Blocking calls inside running event loops: a Jupyter cell (no warning, as in the official
SDK), a plain ``asyncio.run`` program (a warning naming the async twin), the client loop's own
thread (refused: it would wait on itself)."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from tinkjax.client import APIFuture
from tinkjax.client._loop import get_loop, in_notebook_cell, submit


async def _later(value: int) -> int:
    await asyncio.sleep(0.05)
    return value


def test_result_outside_any_loop_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert APIFuture(submit(_later(3))).result(timeout=10) == 3
    assert not in_notebook_cell()


def test_result_inside_a_plain_running_loop_warns_and_still_returns() -> None:
    async def main() -> int:
        future = APIFuture(submit(_later(4)))
        with pytest.warns(RuntimeWarning, match=r"blocks it; use `await future`"):
            return future.result(timeout=10)  # the client loop is another thread: no deadlock

    assert asyncio.run(main()) == 4


def test_await_inside_a_plain_running_loop() -> None:
    async def main() -> list[int]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return [await APIFuture(submit(_later(i))) for i in range(3)]

    assert asyncio.run(main()) == [0, 1, 2]


def test_a_finished_future_is_read_anywhere_without_warning() -> None:
    async def main() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return APIFuture.completed(5).result()

    assert asyncio.run(main()) == 5


def test_blocking_on_the_client_loop_thread_is_refused() -> None:
    async def on_client_loop() -> str:
        pending = APIFuture(submit(_later(1)))
        try:
            pending.result()
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    message = asyncio.run_coroutine_threadsafe(on_client_loop(), get_loop()).result(timeout=10)
    assert "cannot run on the tinkjax client loop" in message


@pytest.mark.timeout(120)
def test_result_and_await_in_a_real_jupyter_cell_print_no_warning() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        # a cell of a Jupyter kernel runs inside the kernel's running loop
        "import asyncio\nasyncio.get_running_loop()\n"
        "from tinkjax.client import APIFuture\nfrom tinkjax.client._loop import submit\n"
        "async def later(v):\n    await asyncio.sleep(0.05)\n    return v",
        "import warnings\nwarnings.simplefilter('always')\n"
        "print(APIFuture(submit(later(7))).result(timeout=10))",
        "print(await APIFuture(submit(later(8))))",
        "import threading\nout = []\n"
        "def in_thread():\n"
        "    async def main():\n"
        "        with warnings.catch_warnings(record=True) as caught:\n"
        "            warnings.simplefilter('always')\n"
        "            out.append(APIFuture(submit(later(9))).result(timeout=10))\n"
        "        out.append([str(w.message) for w in caught])\n"
        "    asyncio.run(main())\n"
        "t = threading.Thread(target=in_thread)\nt.start()\nt.join()\nprint(out)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    outputs = [o for cell in nb.cells for o in cell.outputs]
    assert [o.get("name") for o in outputs] == ["stdout"] * 3, outputs  # no stderr, no error
    assert outputs[0]["text"] == "7\n"
    assert outputs[1]["text"] == "8\n"
    # an asyncio program on another thread of the kernel is a plain running loop: it warns
    assert outputs[2]["text"].startswith("[9, [")
    assert "blocks it" in outputs[2]["text"]
