"""The Ray executor when things go wrong: no Ray, no cluster, a model that cannot be built, Ctrl-C.

Each failure must read as the local executor's would (or as one clear `error:` line), never as a
traceback, a hang or a message printed over the interrupted run.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longweave.batch import BatchJob, BatchStopped, ResultLog, arun_batch
from longweave.executors.ray import RayExecutor
from longweave.testing import Request, ScriptedModel
from tests.test_ray_executor import _corpus  # the driver's side only: nothing is shipped


def _reply(request: Request) -> str:
    text = request.text
    if "How many chairs?" in text:
        return text.split("exactly ", 1)[1].split(" ", 1)[0]
    return "room " + text.split("Room ", 1)[1].split(" ", 1)[0]


def _batch_args(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                ) -> tuple[list[str], dict[str, str]]:
    """The arguments of `longweave batch` over a two-document corpus, run on a local Ray
    runtime, and the environment to run it in."""
    items = _corpus(tmp_path, 2)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": i.question, "document": i.document})
                                 + "\n" for i in items), encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ.update({"COLUMNS": "300", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                    "OPENAI_API_KEY": "sk-test", **(env or {})})
    return ["batch", str(tmp_path), "-q", str(questions), "-o", str(tmp_path / "out.jsonl"),
            "--strategy", "truncate", "--model", "openai:m", "--executor", "ray", *args], environ


def _batch_command(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                   ) -> tuple[subprocess.CompletedProcess[str], float]:
    """`longweave batch` over a two-document corpus in a fresh process (so a hang is a timeout,
    and Ray's state in this process is untouched); the result and its wall time."""
    argv, environ = _batch_args(tmp_path, *args, env=env)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "longweave.cli", *argv],
                            capture_output=True, text=True, env=environ, timeout=60)
    return result, time.perf_counter() - started


def test_without_ray_the_batch_command_names_the_extra_to_install(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'ray':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n", encoding="utf-8")
    result, _ = _batch_command(tmp_path, env={"PYTHONPATH": str(shim)})
    assert result.returncode == 1, result.stderr
    assert "error: ray is not installed" in result.stderr
    assert "pip install 'longweave[ray]'" in result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_local_ray_run_prints_only_longweaves_own_lines(tmp_path: Path) -> None:
    """Ray's start-up log lines ("INFO worker.py ... Started a local Ray instance", its token
    notice) must not land in the command's output; the run's own error still does."""
    result, _ = _batch_command(tmp_path, env={"LONGWEAVE_MAX_RETRIES": "0"})
    assert result.returncode == 1, result.stderr  # nothing answers at the model's address
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    noise = [line for line in result.stderr.splitlines()  # "<time>\tINFO worker.py:2038 -- ..."
             if re.search(r"\b(INFO|WARNING)\s+\S+\.py:\d+ --", line) or "(raylet)" in line]
    assert noise == [], noise


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "no-such-address"])
def test_a_ray_address_where_no_cluster_answers_fails_fast_and_clearly(
    tmp_path: Path, address: str
) -> None:
    # Ray itself retries a dead host:port for many minutes; the command must not.
    result, seconds = _batch_command(tmp_path, "--ray-address", address)
    assert result.returncode == 1, result.stderr
    assert f"error: cannot connect to the Ray cluster at {address!r}" in result.stderr
    assert "ray://host:10001" in result.stderr  # the hint says what an address looks like
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
    assert seconds < 30


# Python's own Ctrl-C handler, as in a terminal: a process started by a shell without job control
# (a CI runner) inherits SIGINT ignored, and would never see it.
_WITH_CTRL_C = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "from longweave.cli import main; main()")


def _ray_processes(session: str) -> list[str]:
    """The command lines of the processes of the Ray runtime `session` still running."""
    listing = subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if session in line]


@pytest.mark.skipif(sys.platform != "linux", reason="finds Ray's processes with Linux's ps")
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_while_ray_starts_ends_like_ctrl_c_elsewhere(tmp_path: Path,
                                                            presses: int) -> None:
    """Ctrl-C once: Ray's start finishes (it blocks the event loop), then the run stops before
    any work is sent. Twice: the start itself is interrupted. Either way one `interrupted:`
    line and 130, as at any other moment of a batch, and no Ray process outlives the run."""
    argv, environ = _batch_args(tmp_path)
    run = subprocess.Popen([sys.executable, "-c", _WITH_CTRL_C, *argv], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=environ)
    try:
        session = ""
        deadline = time.monotonic() + 60
        while not session and time.monotonic() < deadline and run.poll() is None:
            children = subprocess.run(["ps", "-ww", "-o", "args=", "--ppid", str(run.pid)],
                                      capture_output=True, text=True).stdout
            found = re.search(r"--session-name=(\S+)", children)  # Ray's first process is up
            session = found[1] if found else ""
            time.sleep(0.05)
        assert session, "Ray's start was not seen"
        for press in range(presses):
            time.sleep(0.5 * press)
            run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err
    assert err.splitlines()[-1] == (f"interrupted: 0 answers written to {tmp_path / 'out.jsonl'} "
                                    "(0 of them failed); rerun the same command to resume")
    assert "Traceback" not in err and "error" not in err
    deadline = time.monotonic() + 15
    while _ray_processes(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ray_processes(session) == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError("raylet died")])
def test_a_ray_start_that_does_not_finish_is_shut_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: BaseException | type[BaseException]
) -> None:
    """What a stopped or failed `ray.init` had started is shut down; Ctrl-C goes on as itself
    (for the command's `interrupted` line), a failure as one clear error."""
    import ray

    from longweave.errors import ConfigError

    calls: list[str] = []

    def init(**options: object) -> None:
        calls.append("init")
        raise stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    job = BatchJob("truncate", ScriptedModel(), cache=False, cache_dir=tmp_path / "cache")
    expected = KeyboardInterrupt if stop is KeyboardInterrupt else ConfigError
    with pytest.raises(expected) as raised:
        asyncio.run(anext(RayExecutor().run(job, [_corpus(tmp_path, 1)])))
    assert calls == ["init", "shutdown"]
    if expected is ConfigError:
        assert "cannot start a local Ray runtime: RuntimeError: raylet died" in str(raised.value)


async def test_a_model_that_cannot_be_built_is_recorded_as_the_local_executor_records_it(
    tmp_path: Path, ray_runtime: None
) -> None:
    items = _corpus(tmp_path, 2)
    job = BatchJob("truncate", "bogus:model", cache=False, cache_dir=tmp_path / "cache")
    # Every item would fail the same way, so both executors stop the run at the first record.
    with pytest.raises(BatchStopped, match="unknown model 'bogus:model'"):
        await arun_batch(items, tmp_path / "local.jsonl", job)
    with pytest.raises(BatchStopped, match="unknown model 'bogus:model'"):
        await arun_batch(items, tmp_path / "ray.jsonl", job, executor=RayExecutor())

    def errors(name: str) -> set[tuple[str | None, str | None, bool]]:
        return {(r.error_type, r.error, r.fatal) for r in ResultLog(tmp_path / name).records()}

    assert errors("ray.jsonl") == errors("local.jsonl") == {
        ("ConfigError", "unknown model 'bogus:model'", True)}


def _slow_model() -> ScriptedModel:
    def reply(request: Request) -> str:
        if "Room 0 " not in request.text:
            time.sleep(60)  # in flight until the run is cancelled
        return _reply(request)

    model = ScriptedModel()
    model.on("reader", reply=reply)
    return model


async def test_cancelling_a_ray_batch_keeps_its_answers_quietly_and_a_rerun_resumes(
    tmp_path: Path, ray_runtime: None
) -> None:
    items = _corpus(tmp_path, 4)
    out = tmp_path / "ray.jsonl"
    reported: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: reported.append(context["message"]))
    first = asyncio.Event()
    job = BatchJob("truncate", _slow_model(), cache=False, cache_dir=tmp_path / "cache")
    run = asyncio.create_task(arun_batch(items, out, job, executor=RayExecutor(concurrency=1),
                                         on_record=lambda _: first.set()))
    await asyncio.wait_for(first.wait(), 60)
    run.cancel()  # what Ctrl-C does to asyncio.run's task
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.sleep(3)  # the cancelled tasks' errors reach the driver
    gc.collect()
    assert reported == []  # e.g. "Future exception was never retrieved"
    kept = ResultLog(out).records()
    assert {Path(r.document).name for r in kept} == {"doc0.txt"} and all(r.ok for r in kept)

    fast = ScriptedModel()
    fast.on("reader", reply=_reply)
    job = BatchJob("truncate", fast, cache=False, cache_dir=tmp_path / "cache")
    again = await arun_batch(items, out, job, executor=RayExecutor())
    assert (again.skipped, again.answered, again.failed) == (2, len(items) - 2, 0)
    records = ResultLog(out).records()
    assert len(records) == len({r.key for r in records}) == len(items)
