"""The Hydra entry point every recipe shares.

A recipe is a YAML file in ``recipes/config`` whose defaults list starts with a schema of
:data:`~coworld_trl.training.config.SCHEMAS` and selects presets from
``coworld_trl/training/presets`` (on Hydra's search path through the recipe's
``hydra.searchpath``); :func:`hydra_recipe` turns the composed config into the schema's
dataclass and runs it. Every error a user can fix ends the process with one line
``error: ...`` naming the value and the fix, and exit code 2: the library's
(:class:`~coworld_trl.errors.CoWorldError`) and Hydra's own (a typo'd key, an unknown preset,
a value of the wrong type, an override that does not parse). ``HYDRA_FULL_ERROR=1`` re-raises
them with the traceback.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
import threading
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Callable, NoReturn

from coworld_trl.errors import CoWorldError
from coworld_trl.training.config import SCHEMAS, from_dict, register_hydra_schemas
from coworld_trl.training.sweep import sweep_key

FULL_ERROR = "HYDRA_FULL_ERROR"
USAGE_EXIT_CODE = CoWorldError.exit_code


def register_resolvers() -> None:
    """The resolvers recipes' ``output_dir`` uses."""
    from omegaconf import OmegaConf

    # DV2 Finetune and DV2 Finetune + EWC get separate run folders by default.
    OmegaConf.register_new_resolver("ewc_suffix", lambda lmbda: f"_ewc{float(lmbda):g}" if float(lmbda) > 0 else "",
                                    replace=True)
    OmegaConf.register_new_resolver("sweep_key", sweep_key, replace=True)


def config_keys(config, prefix: str = "") -> list[str]:
    """Every leaf of a config dataclass instance as a dotted key (``train.seed``)."""
    keys = []
    for f in fields(config):
        value = getattr(config, f.name)
        keys += config_keys(value, f"{prefix}{f.name}.") if is_dataclass(value) else [f"{prefix}{f.name}"]
    return keys


def unknown_key_message(key: str, schema: type) -> str:
    """``unknown config key 'trian.seed'; did you mean 'train.seed'?``: the keys of the same
    name in another section and the closest spellings, else the keys of the nearest section."""
    keys = config_keys(schema())
    name = key.rsplit(".", 1)[-1]
    scored = sorted(((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in keys), reverse=True)
    close = [k for k in keys if k.rsplit(".", 1)[-1] == name]
    close += [k for ratio, k in scored[:3] if ratio >= max(0.7, scored[0][0] - 0.1)]
    close = list(dict.fromkeys(close))[:3]
    if close:
        return f"unknown config key {key!r}; did you mean {' or '.join(map(repr, close))}?"
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        section = ".".join(parts[:depth]) + "."
        children = sorted({k[len(section):].split(".")[0] for k in keys if k.startswith(section)})
        if children:
            return f"unknown config key {key!r}; the keys of {section[:-1]} are {', '.join(children)}"
    return f"unknown config key {key!r}; the top-level keys are {', '.join(f.name for f in fields(schema))}"


def hydra_error_message(err: Exception, schema: type) -> str:
    """One line for an error Hydra raises before the run starts (its own report spans several)."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(err, OverrideParseException):
        reason = str(err).splitlines()[0]
        return (f"cannot parse the override {err.override!r} ({reason}); quote values holding brackets, commas or "
                f"spaces, see https://hydra.cc/docs/advanced/override_grammar/basic/")
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"unknown {group} {name!r}; use one of {', '.join(sorted(err.options))}"
    overridden = re.match(r"Could not override '([^']+)'", str(err))
    if overridden and isinstance(err.__cause__, (ConfigKeyError, ConfigAttributeError)):
        return unknown_key_message(overridden.group(1), schema)
    lines = [str(err).splitlines()[0]]
    if err.__cause__ is not None:
        lines.append(str(err.__cause__).splitlines()[0])
    return "; ".join(line.strip().rstrip(".") for line in lines if line.strip()) + \
        " (`--cfg job` prints the composed config)"


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)  # one line, no traceback
    sys.exit(USAGE_EXIT_CODE)


def hydra_recipe(config_name: str, config_dir: str | Path, run: Callable, schema: str):
    """``main()`` of a recipe: ``config_dir/<config_name>.yaml`` composed by Hydra (command-line
    overrides included), converted to ``SCHEMAS[schema]`` and passed to ``run``."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from tqdm import tqdm

    register_hydra_schemas()
    register_resolvers()
    user_full_error = os.environ.get(FULL_ERROR) == "1"

    @hydra.main(config_path=str(Path(config_dir).resolve()), config_name=config_name, version_base=None)
    def task(cfg) -> None:
        if not user_full_error:
            os.environ.pop(FULL_ERROR, None)  # the run and its subprocesses see the user's environment
        register_resolvers()  # again: a submitit launcher runs the job in a fresh process
        try:
            run(from_dict(SCHEMAS[schema], OmegaConf.to_container(cfg, resolve=True)))
        except CoWorldError as err:
            if user_full_error:
                raise
            print(f"error: {err}", file=sys.stderr)  # one line, no traceback
            sys.exit(err.exit_code)

    def main() -> None:
        # tqdm's default lock is a multiprocessing RLock: a named semaphore that a killed run leaks
        # (the resource tracker's warning); this process's bars are drawn by its threads only.
        tqdm.set_lock(threading.RLock())
        # Hydra prints a multi-line report of an error in composing the config (before `task`
        # runs) unless HYDRA_FULL_ERROR=1, in which case it raises it: set while Hydra composes.
        os.environ[FULL_ERROR] = "1"
        try:
            task()
        except (HydraException, OmegaConfBaseException) as err:
            if user_full_error:
                raise
            fail(hydra_error_message(err, SCHEMAS[schema]))
        finally:
            if not user_full_error:
                os.environ.pop(FULL_ERROR, None)

    return main
