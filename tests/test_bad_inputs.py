"""The bad-input table (issue 16): every input a user can get wrong, as the user meets it.

Each case runs a recipe (``python recipes/<name>.py <overrides>``) or the data CLI
(``python -m coworld_trl.data ...``) on a damaged or mistaken input and asserts three things:

* stderr ends with one line ``error: ...`` naming the value and the fix, and holds no traceback;
* the exit code: 2 for the library's user-facing errors (:class:`~coworld_trl.errors.CoWorldError`);
* nothing in the case's folder changed: the set of paths and every file's sha256 and mtime
  are the same before and after, so a dataset is never touched and a run folder that did not
  exist is not left behind (where it would block the corrected command).

The losses' cases call the library directly and assert the exception type and its one-line
message.

The commands run in child processes forked from one launcher that has already imported
torch, TorchRL, Hydra and dm_control (several seconds per interpreter on a shared 2-core
machine): the child sets ``sys.argv``, the working directory and stdout/stderr as a shell would
and runs the recipe file or the module as ``__main__``.
``test_the_launcher_answers_as_a_fresh_interpreter`` checks that a fresh ``python ...`` answers
the same.

Also here: a SIGKILLed run leaves no named semaphore for the resource tracker to report, and
docs/what_happens_when.md points at tests that exist and lists every case of the table.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_WM, ted_batch
from tensordict import TensorDict
from test_data import incoming_episode, write_npz_dir

from coworld_trl.agents import AgentConfig, ModelConfig, NonFiniteLossError, make_dreamer_agent
from coworld_trl.data import import_npz
from coworld_trl.modules import make_world_model
from coworld_trl.objectives import MixedRewardLoss, WorldModelLoss
from coworld_trl.training.checkpoint import save_checkpoint
from coworld_trl.training.config import SCHEMAS, from_dict, to_dict

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
TIMEOUT_S = 240

TINY_MODEL = ["model.stoch=4", "model.classes=4", "model.deter=16", "model.hidden=16", "model.cnn_depth=4",
              "model.mlp_units=16", "train.device=cpu", "train.threads=1"]
# An offline recipe that gets as far as building its agent: tiny sizes, short sequences.
OFFLINE = [*TINY_MODEL, "data.batch_size=2", "data.seq_len=8", "data.buffer_capacity=1000", "eval.episodes=1",
           "target.fast_render=true"]

# The launcher: import the heavy packages once, then fork one child per command.
LAUNCHER = r"""
import atexit, json, os, runpy, signal, sys, traceback
import hydra, omegaconf, torch, torchrl, coworld_trl.training  # the slow imports, paid once
import dm_control.suite, coworld_trl.envs.dmc  # its import-time log lines go to the launcher's stderr

def child(job):
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdin = open(os.devnull)  # the launcher's stdin carries the jobs
    signal.alarm(job["timeout"])
    sys.argv = list(job["argv"])
    code = 0
    try:
        if job["module"]:
            sys.path[0] = job["cwd"]
            runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:  # what the interpreter does with sys.exit(...)
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(job)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


def user_env() -> dict[str, str]:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


class Launcher:
    """Runs ``python <argv>`` (a recipe file, or ``-m module``) in a child forked from one warm interpreter."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=REPO, env=user_env())

    def run(self, argv: list[str], cwd: Path, logs: Path) -> subprocess.CompletedProcess:
        module = argv[1] if argv[0] == "-m" else None
        argv = [module, *argv[2:]] if module else argv
        out, err = logs / "stdout.txt", logs / "stderr.txt"
        job = dict(argv=argv, module=module, cwd=str(cwd), env=user_env(), stdout=str(out), stderr=str(err),
                   timeout=TIMEOUT_S)
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S + 30)
        assert ready, f"the launcher did not answer within {TIMEOUT_S + 30} s"
        code = int(self.proc.stdout.readline())
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.kill()  # it holds nothing to flush; its interpreter shutdown alone takes seconds
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def launcher():
    launcher = Launcher()
    yield launcher
    launcher.close()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: a directory, or a file's sha256 and mtime."""
    state = {}
    for p in sorted(root.rglob("*")):
        key = p.relative_to(root).as_posix()
        state[key] = ("dir",) if p.is_dir() else (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return state


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    """stderr ends with ``error: ...`` holding every fragment, and shows no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1, stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    return lines[-1]


# ------------------------------------------------------------------ inputs
@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    """Good inputs, made once by the library's own writers; each case copies what it damages.

    ``ds64``: 3 episodes (20, 12 and 29 steps) of 64x64 pixels and 6-d actions (walker's), no env;
    ``ds16``: the same at 16x16; ``cheetah``: ``ds64`` recorded as made on dmc/cheetah_run."""
    root = tmp_path_factory.mktemp("originals")
    import_npz(write_npz_dir(root / "npz64", size=64), root / "ds64")
    import_npz(write_npz_dir(root / "npz16"), root / "ds16")
    import_npz(root / "npz64", root / "cheetah", env="dmc/cheetah_run")
    return root


@dataclass
class Kit:
    """What a case's ``prepare`` may use: the case folder, the good inputs, the launcher."""

    folder: Path
    originals: Path
    launcher: Launcher
    logs: Path

    def copy(self, name: str) -> Path:
        shutil.copytree(self.originals / name, self.folder / name, copy_function=shutil.copy2)
        return self.folder / name

    def config_yaml(self, recipe: str, schema: str, args: tuple[str, ...]) -> str:
        """The ``config.yaml`` a run of ``recipe args`` writes (``--cfg job``, through the schema)."""
        proc = self.launcher.run([str(RECIPES / recipe), *fill(args, self.folder), "--cfg", "job", "--resolve"],
                                 self.folder, self.logs)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return yaml.safe_dump(to_dict(from_dict(SCHEMAS[schema], yaml.safe_load(proc.stdout))), sort_keys=False)


def fill(args, folder: Path) -> list[str]:
    return [a.replace("{tmp}", str(folder)) for a in args]


def datasets(*names: str) -> Callable[[Kit], None]:
    def make(kit: Kit) -> None:
        for name in names:
            kit.copy(name)
    return make


def truncated(name: str, size: int) -> Callable[[Kit], None]:
    return lambda kit: os.truncate(kit.copy("ds64") / name, size)


def flipped_byte(kit: Kit) -> None:
    file = kit.copy("ds64") / "rows" / "pixels.memmap"
    data = bytearray(file.read_bytes())
    data[1234] ^= 1
    file.write_bytes(bytes(data))


def npz_dir(**changes: Callable[[np.ndarray], np.ndarray]) -> Callable[[Kit], None]:
    """``npz/``: two good 16x16 episodes and a third with ``changes`` (key -> new array) applied."""
    def make(kit: Kit) -> None:
        write_npz_dir(kit.folder / "npz", lengths=(9, 7))
        episode = incoming_episode(8, seed=5)
        episode.update({key: change(episode[key]) for key, change in changes.items()})
        np.savez_compressed(kit.folder / "npz" / "ep002.npz", **episode)
    return make


def truncated_npz(kit: Kit) -> None:
    npz_dir()(kit)
    os.truncate(kit.folder / "npz" / "ep002.npz", 100)


def a_file(relative: str, content: bytes = b"mine\n") -> Callable[[Kit], None]:
    def make(kit: Kit) -> None:
        (kit.folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (kit.folder / relative).write_bytes(content)
    return make


def both(*makers: Callable[[Kit], None]) -> Callable[[Kit], None]:
    def make(kit: Kit) -> None:
        for maker in makers:
            maker(kit)
    return make


def dreamer(*args: str) -> tuple[str, ...]:
    return (*TINY_MODEL, "output_dir={tmp}/run", *args)


def coworld(*args: str, dataset: str = "ds64") -> tuple[str, ...]:
    return (*OFFLINE, "output_dir={tmp}/run", f"dataset={{tmp}}/{dataset}", *args)


def run_folder(checkpoint: Callable[[Path], None] | None = None, *config_args: str) -> Callable[[Kit], None]:
    """``run/``: the config.yaml of ``dreamer(*config_args)`` and a checkpoint written by ``checkpoint``."""
    def make(kit: Kit) -> None:
        (kit.folder / "run").mkdir()
        config = kit.config_yaml("dreamer_dmc.py", "dreamer_schema", dreamer(*config_args))
        (kit.folder / "run" / "config.yaml").write_text(config)
        if checkpoint is not None:
            checkpoint(kit.folder / "run" / "checkpoint.pt")
    return make


def truncated_checkpoint(path: Path) -> None:
    save_checkpoint(path, {"agent": {"w": torch.zeros(100)}})
    os.truncate(path, 100)


@dataclass(frozen=True)
class Case:
    """``python <command> <args>`` in the case's folder (``{tmp}`` in an argument); the error line holds ``says``."""

    command: str  # a recipe in recipes/, or "data" (python -m coworld_trl.data)
    args: tuple[str, ...]
    says: tuple[str, ...]
    prepare: Callable[[Kit], None] | None = None
    code: int = 2
    marks: tuple = ()


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
NO_TENSORBOARD = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None,
                                    reason="tensorboard is installed")
CASES = {
    # ---------------------------------------------------------------- the config (Hydra and validate())
    "unknown env": Case("dreamer_dmc.py", dreamer("env.name=dmc/walker_wlk"),
                        ("unknown environment 'dmc/walker_wlk' (did you mean 'dmc/walker_walk'",)),
    "unknown source env": Case("coworld_dmc.py", coworld("sources=[dmc/cheetah_rn]"),
                               ("unknown environment 'dmc/cheetah_rn' (did you mean 'dmc/cheetah_run'",),
                               datasets("ds64")),
    "typo'd key": Case("dreamer_dmc.py", dreamer("trian.seed=1"),
                       ("unknown config key 'trian.seed'; did you mean 'train.seed'?",)),
    "typo'd nested key": Case("dreamer_dmc.py", dreamer("train.sed=1"),
                              ("unknown config key 'train.sed'; did you mean 'train.seed'?",)),
    "key of another recipe": Case("coworld_dmc.py", coworld("train.total_frames=5"), ("train.total_frames",),
                                  datasets("ds64")),
    "bad preset": Case("dreamer_dmc.py", dreamer("preset=fast"), ("unknown preset 'fast'; use one of paper, quick, "
                                                                   "reference",)),
    "wrongly typed value": Case("dreamer_dmc.py", dreamer("data.batch_size=many"),
                                ("data.batch_size=many", "'many'", "could not be converted to Integer")),
    "override that does not parse": Case("dreamer_dmc.py", dreamer("train.seed=[1"),
                                         ("cannot parse the override 'train.seed=[1'", "override_grammar")),
    "batch 0": Case("dreamer_dmc.py", dreamer("data.batch_size=0"), ("data.batch_size=0 must be >= 1",)),
    "sequence longer than an episode": Case("dreamer_dmc.py", dreamer("data.seq_len=600"),
                                            ("data.seq_len=600 is longer than an episode", "use <= 500")),
    "CUDA device without CUDA": Case("dreamer_dmc.py", dreamer("train.device=cuda"),
                                     ("train.device='cuda' but CUDA is not available",), marks=(NO_CUDA,)),
    "logger not installed": Case("dreamer_dmc.py", dreamer("logger.backend=tensorboard"),
                                 ("logger.backend=tensorboard needs the tensorboard package",), marks=(NO_TENSORBOARD,)),
    # ---------------------------------------------------------------- the output folder
    "output dir is a file": Case("dreamer_dmc.py", dreamer("output_dir={tmp}/taken"),
                                 ("output_dir={tmp}/taken is not a writable folder",), a_file("taken")),
    "output dir below a file": Case("dreamer_dmc.py", dreamer("output_dir={tmp}/taken/run"),
                                    ("output_dir={tmp}/taken/run is not a writable folder",), a_file("taken")),
    "output dir holds another run": Case("dreamer_dmc.py", dreamer(),
                                         ("holds a different run's config (env.name: 'dmc/cheetah_run' -> "
                                          "'dmc/walker_walk')", "use a new output_dir"),
                                         run_folder(None, "env.name=dmc/cheetah_run")),
    "output dir holds unrelated files": Case("dreamer_dmc.py", dreamer(),
                                             ("output_dir={tmp}/run holds files that are not a coworld_trl run "
                                              "(notes.txt)", "new or empty output_dir"), a_file("run/notes.txt")),
    "corrupt checkpoint": Case("dreamer_dmc.py", dreamer(),
                               ("cannot read checkpoint {tmp}/run/checkpoint.pt (PytorchStreamReader failed",
                                "delete it or use a new output_dir"), run_folder(truncated_checkpoint)),
    "checkpoint of another format": Case("dreamer_dmc.py", dreamer(),
                                         ("checkpoint {tmp}/run/checkpoint.pt has format 2", "resumes format 3"),
                                         run_folder(lambda path: torch.save({"format": 2, "agent": {}}, path))),
    "checkpoint that would run code": Case("dreamer_dmc.py", dreamer(),
                                           ("cannot read checkpoint", "Unsupported global", "pathlib"),
                                           run_folder(lambda path: torch.save({"agent": pathlib.PurePath("x")},
                                                                              path))),
    # ---------------------------------------------------------------- a recipe's dataset
    "missing dataset": Case("coworld_dmc.py", coworld("make_dataset_episodes=0", dataset="nowhere"),
                            ("target dataset {tmp}/nowhere does not exist", "collect_dataset.py",
                             "make_dataset_episodes=N")),
    "npz folder as dataset": Case("coworld_dmc.py", coworld(dataset="npz"),
                                  ("dataset={tmp}/npz is not a coworld_trl dataset",
                                   "python -m coworld_trl.data convert {tmp}/npz"), npz_dir()),
    "truncated dataset": Case("coworld_dmc.py", coworld(), ("rows/pixels.memmap: 1000 bytes, expected 749568 bytes",
                                                            "--overwrite"), truncated("rows/pixels.memmap", 1000)),
    "emptied episode index": Case("coworld_dmc.py", coworld(), ("episodes/length.memmap: 0 bytes, expected 24 bytes",),
                                  truncated("episodes/length.memmap", 0)),
    "dataset of another env": Case("coworld_dmc.py", coworld(dataset="cheetah"),
                                   ("made on dmc/cheetah_run, but the target env is dmc/walker_downhill",),
                                   datasets("cheetah")),
    "wrong image size": Case("coworld_dmc.py", coworld(dataset="ds16"),
                             ("holds 16x16 images, but target.image_size=64",), datasets("ds16")),
    "action-dim mismatch": Case("coworld_dmc.py", coworld("target.name=dmc/cartpole_balance",
                                                          "sources=[dmc/cartpole_swingup]"),
                                ("has 6-d actions, but dmc/cartpole_balance takes 1-d",), datasets("ds64")),
    "sequence longer than the dataset's episodes": Case("coworld_dmc.py", coworld("data.seq_len=40"),
                                                        ("seq_len=40 is longer than every episode", "longest 29"),
                                                        datasets("ds64")),
    # ---------------------------------------------------------------- the data CLI
    "info on a missing dataset": Case("data", ("info", "{tmp}/nowhere"), ("{tmp}/nowhere: no such dataset directory",)),
    "validate a truncated dataset": Case("data", ("validate", "{tmp}/ds64"), ("pixels.memmap: 1000 bytes",),
                                         truncated("rows/pixels.memmap", 1000)),
    "validate a flipped byte": Case("data", ("validate", "--checksum", "{tmp}/ds64"),
                                    ("1 file(s) differ from their checksum", "rows/pixels.memmap"), flipped_byte),
    "validate against another env's action dim": Case("data", ("validate", "{tmp}/ds64", "--env",
                                                               "dmc/cartpole_balance"),
                                                      ("action dim 6, dmc/cartpole_balance takes 1",), datasets("ds64")),
    "validate against an unknown env": Case("data", ("validate", "{tmp}/ds64", "--env", "dmc/walker_wlk"),
                                            ("unknown environment 'dmc/walker_wlk'",), datasets("ds64")),
    "ragged npz": Case("data", ("convert", "{tmp}/npz", "{tmp}/out"), ("ep002.npz: ragged episode",),
                       npz_dir(reward=lambda a: a[:-1])),
    "float64 npz images": Case("data", ("convert", "{tmp}/npz", "{tmp}/out"), ("image dtype float64", "uint8"),
                               npz_dir(image=lambda a: a.astype(np.float64))),
    "NaN rewards": Case("data", ("convert", "{tmp}/npz", "{tmp}/out"), ("ep002.npz: reward is NaN or inf at row(s) [3]",),
                        npz_dir(reward=lambda a: np.where(np.arange(len(a)) == 3, np.nan, a))),
    "channel order CHW": Case("data", ("convert", "{tmp}/npz", "{tmp}/out"),
                              ("image shape (8, 3, 16, 16)", "channels first; transpose to [L, H, W, 3]"),
                              npz_dir(image=lambda a: a.transpose(0, 3, 1, 2))),
    "mixed image sizes": Case("data", ("convert", "{tmp}/npz", "{tmp}/out"), ("image size 32x32; expected 16x16",),
                              npz_dir(image=lambda a: a.repeat(2, 1).repeat(2, 2))),
    "action-dim mismatch in npz": Case("data", ("convert", "{tmp}/npz", "{tmp}/out", "--env", "dmc/cartpole_balance"),
                                       ("action dim 6, but the env takes 1",), npz_dir()),
    "truncated npz": Case("data", ("convert", "{tmp}/npz", "{tmp}/out"), ("ep002.npz: not a readable npz file",),
                          truncated_npz),
    "convert onto an existing dataset": Case("data", ("convert", "{tmp}/npz", "{tmp}/ds64"),
                                             ("{tmp}/ds64 already exists", "--overwrite"),
                                             both(npz_dir(), datasets("ds64"))),
    "convert below a file": Case("data", ("convert", "{tmp}/npz", "{tmp}/taken/out"),
                                 ("{tmp}/taken/out: cannot create the dataset there (Not a directory)",),
                                 both(npz_dir(), a_file("taken"))),
}


def argv(case: Case, folder: Path) -> list[str]:
    args = fill(case.args, folder)
    return ["-m", "coworld_trl.data", *args] if case.command == "data" else [str(RECIPES / case.command), *args]


@pytest.mark.parametrize("case", [pytest.param(case, id=name, marks=case.marks) for name, case in CASES.items()])
def test_a_bad_input_is_refused_in_one_line_and_changes_no_file(case, launcher, originals, tmp_path):
    """One line naming the value and the fix, exit code 2, and every path and byte of the case's
    folder (datasets, run folders, npz inputs) as it was: no run folder is left behind."""
    kit = Kit(tmp_path / "case", originals, launcher, tmp_path / "logs")
    kit.folder.mkdir()
    kit.logs.mkdir()
    if case.prepare is not None:
        case.prepare(kit)
    before = snapshot(kit.folder)
    proc = launcher.run(argv(case, kit.folder), kit.folder, kit.logs)
    assert_one_error_line(proc.stderr, *fill(case.says, kit.folder))
    assert proc.returncode == case.code, proc.stderr[-3000:]
    assert snapshot(kit.folder) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["typo'd key", "truncated dataset", "NaN rewards"])
def test_the_launcher_answers_as_a_fresh_interpreter(name, launcher, originals, tmp_path):
    """The table's launcher is no shortcut: a fresh ``python ...`` prints the same line and exits the same."""
    case = CASES[name]
    answers = []
    for run in ("launcher", "fresh"):
        kit = Kit(tmp_path / run, originals, launcher, tmp_path / f"{run}_logs")
        kit.folder.mkdir()
        kit.logs.mkdir()
        if case.prepare is not None:
            case.prepare(kit)
        if run == "launcher":
            proc = launcher.run(argv(case, kit.folder), kit.folder, kit.logs)
        else:
            proc = subprocess.run([sys.executable, *argv(case, kit.folder)], cwd=kit.folder, env=user_env(),
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
        line = assert_one_error_line(proc.stderr)
        answers.append((proc.returncode, line.replace(str(kit.folder), "{tmp}")))
    assert answers[0] == answers[1]


# ------------------------------------------------------------------ the losses
def tiny_world_model():
    return make_world_model(action_dim=2, **TINY_WM)


def with_entry(key, change):
    def make(batch: TensorDict) -> TensorDict:
        batch[key] = change(batch[key])
        return batch
    return make


LOSS_CASES = {
    "batch 0": (lambda: ted_batch(0, 5), ValueError, ("the batch is empty (batch_size=(0, 5))", "data.batch_size >= 1")),
    "no time dimension": (lambda: ted_batch(2, 5).reshape(-1), ValueError, ("expects a [batch, time] TensorDict",)),
    "wrong image size": (lambda: ted_batch(2, 5, obs_shape=(3, 84, 84)), ValueError,
                         ("'pixels' has shape (2, 5, 3, 84, 84)", "resize the images to 64x64")),
    "channel order HWC": (lambda: ted_batch(2, 5, obs_shape=(64, 64, 3)), ValueError,
                          ("channels-last (HWC): permute them to CHW",)),
    "action-dim mismatch": (lambda: ted_batch(2, 5, action_dim=3), ValueError,
                            ("'action' has shape (2, 5, 3)", "takes 2-d actions")),
    "float64 actions": (lambda: with_entry("action", torch.Tensor.double)(ted_batch(2, 5)), ValueError,
                        ("'action' has dtype torch.float64", ".float()")),
    "float64 pixels": (lambda: with_entry("pixels", torch.Tensor.double)(ted_batch(2, 5)), ValueError,
                       ("'pixels' has dtype torch.float64",)),
    "missing key": (lambda: ted_batch(2, 5).exclude("pixels"), KeyError,
                    ("WorldModelLoss: the batch has no key 'pixels'", "set_keys(pixels=...)")),
}


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_a_bad_batch_is_refused_by_the_world_model_loss_in_one_line(name):
    make, error, fragments = LOSS_CASES[name]
    with pytest.raises(error) as info:
        WorldModelLoss(tiny_world_model())(make())
    message = info.value.args[0]
    assert "\n" not in message and all(f in message for f in fragments), message


def test_a_target_batch_of_another_action_dim_is_refused_by_the_mixed_reward_loss():
    batch = TensorDict({"source": ted_batch(2, 5), "target": ted_batch(2, 5, action_dim=3)})
    with pytest.raises(ValueError) as info:
        MixedRewardLoss(tiny_world_model())(batch)
    message = info.value.args[0]
    assert "\n" not in message and "target actions are 3-d but the source world model takes 2-d" in message


def test_a_nan_reward_stops_an_update_naming_the_loss_term():
    """A NaN that reaches a loss (train.nan_policy=raise) is a user-facing error naming the term."""
    model = ModelConfig(stoch=4, classes=4, deter=16, hidden=16, cnn_depth=4, mlp_units=16)
    agent = make_dreamer_agent(model, AgentConfig(horizon=3), action_dim=2)
    batch = ted_batch(2, 5)
    batch["next", "reward"][0, 2] = float("nan")
    with pytest.raises(NonFiniteLossError) as info:
        agent.update(batch)
    message = str(info.value)
    assert "\n" not in message and "loss_reward" in message and info.value.exit_code == 2


# ------------------------------------------------------------------ a SIGKILL leaks nothing
def test_replays_create_no_named_semaphores(originals, tmp_path, monkeypatch):
    """TorchRL's storages and writers keep their counters in ``multiprocessing.Value``s unless
    built ``compilable``: one named semaphore each (/dev/shm/sem.mp-*), which a SIGKILL leaks and
    the resource tracker then reports. Neither the online replay nor a dataset's buffer makes one."""
    import multiprocessing.synchronize

    from test_replay import steps

    from coworld_trl.data import OfflineDataset
    from coworld_trl.training.replay import OnlineReplay

    created = []
    make = multiprocessing.synchronize.SemLock.__init__
    monkeypatch.setattr(multiprocessing.synchronize.SemLock, "__init__",
                        lambda self, *args, **kwargs: created.append(args) or make(self, *args, **kwargs))
    replay = OnlineReplay(tmp_path / "replay", capacity=100, seq_len=4, whole_episodes=False)
    replay.extend(steps([30]))
    replay.sample(2)
    OnlineReplay(tmp_path / "replay", capacity=100, seq_len=4).load_state_dict(replay.state_dict())
    OfflineDataset(originals / "ds64").replay_buffer(batch_size=2, seq_len=4, prefetch=2).sample()
    assert created == []


@pytest.mark.slow
def test_a_killed_run_leaves_no_semaphore_to_clean_up(tmp_path):
    """SIGKILL mid-run: the resource tracker has nothing to report (it was never needed). Its
    stderr is this pipe too, so ``communicate`` returns after it has said whatever it would."""
    out = tmp_path / "run"
    args = [*TINY_MODEL, "data.batch_size=2", "data.seq_len=8", "data.buffer_capacity=1000",
            "data.whole_episodes=false", "train.total_frames=4000", "train.prefill_frames=400", "eval.episodes=1",
            "eval.every_updates=1000000", "eval.video=false", "env.name=dmc/cartpole_balance", "env.action_repeat=8",
            "env.fast_render=true", f"output_dir={out}"]
    proc = subprocess.Popen([sys.executable, str(RECIPES / "dreamer_dmc.py"), *args], cwd=tmp_path, env=user_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + TIMEOUT_S
    while not (out / "replay").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(4)  # collecting and updating
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == -signal.SIGKILL
    assert "resource_tracker" not in stderr and "leaked" not in stderr, stderr[-2000:]


def test_what_happens_when_points_at_tests_that_exist_and_lists_every_case():
    text = (REPO / "docs" / "what_happens_when.md").read_text()
    for file, name in re.findall(r"`(tests/test_\w+\.py)::(\w+)`", text):
        assert re.search(rf"^def {name}\(", (REPO / file).read_text(), re.M), f"{file}::{name} does not exist"
    assert set(re.findall(r"table\[([^\]]+)\]", text)) - {"..."} == set(CASES)
