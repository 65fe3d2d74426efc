"""DeepMind Control Suite tasks, and the paper's six modified tasks, rendered to pixels.

The variants are built from dm_control's own XML, edited in memory (nothing is written to
site-packages):

=====================  ==================================================================
``walker_uphill``      gravity tilted 15 degrees backwards (``-2.54 0 -9.47``), the
``cheetah_uphill``     ``side`` camera rolled by the same angle, floor half-length 1000
``walker_downhill``    gravity tilted 15 degrees forwards (``2.54 0 -9.47``), camera rolled
``cheetah_downhill``   the other way, floor half-length 1000
``walker_nofoot``      geom ``right_foot`` shrunk to ``0.001 0.001``; motors unchanged, so
``cheetah_nopaw``      the action stays 6-d (``ffoot`` for the cheetah)
=====================  ==================================================================

Walker variants keep the walk reward, cheetah variants the run reward. ``+x`` is forward.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import dm_env
import numpy as np
from dm_control.suite.wrappers import pixels
from dm_env import specs

from coworld_trl.envs.gl import exclusive_render

SLOPE_DEGREES = 15
_GRAVITY = {"uphill": "-2.54 0 -9.47", "downhill": "2.54 0 -9.47"}  # 9.81 * (sin, cos) of 15 degrees
_FLOOR_HALF_LENGTH = "1000"
_SHRUNK_SIZE = "0.001 0.001"


@dataclass(frozen=True)
class DMCVariant:
    """A modified DMC task: the suite task it starts from and the edit applied to its XML."""

    domain: str  # "walker" or "cheetah"
    base_task: str  # the suite task whose reward it keeps
    edit: str  # "uphill", "downhill" or "nofoot"
    floor: str  # name of the ground geom
    foot: str  # geom shrunk by "nofoot"
    camera_pitch: int  # the side camera's first Euler angle (kept; the third one rolls it)


VARIANTS: dict[str, DMCVariant] = {
    f"{domain}_{edit_name}": DMCVariant(domain, base, edit, floor, foot, pitch)
    for domain, base, floor, foot, pitch, names in (
        ("walker", "walk", "floor", "right_foot", 60, ("uphill", "downhill", "nofoot")),
        ("cheetah", "run", "ground", "ffoot", 90, ("uphill", "downhill", "nopaw")),
    )
    for edit_name, edit in zip(names, ("uphill", "downhill", "nofoot"))
}


def variant_xml(variant: DMCVariant) -> tuple[bytes, dict]:
    """The variant's MJCF string and assets, from the domain's own XML."""
    from dm_control import suite

    xml, assets = getattr(suite, variant.domain).get_model_and_assets()
    root = ET.fromstring(xml)
    if variant.edit == "nofoot":
        _find(root, "geom", variant.foot).set("size", _SHRUNK_SIZE)
    else:
        option = root.find("option")
        if option is None:
            option = ET.SubElement(root, "option")
        option.set("gravity", _GRAVITY[variant.edit])
        # Uphill: the floor rises to the right of the image, so the camera rolls clockwise.
        roll = -SLOPE_DEGREES if variant.edit == "uphill" else SLOPE_DEGREES
        camera = _find(root, "camera", "side")
        camera.attrib.pop("quat", None)
        camera.set("euler", f"{variant.camera_pitch} 0 {roll}")
        floor = _find(root, "geom", variant.floor)
        floor.set("size", " ".join([_FLOOR_HALF_LENGTH, *floor.get("size").split()[1:]]))
    return ET.tostring(root), assets


def _find(root: ET.Element, tag: str, name: str) -> ET.Element:
    element = root.find(f".//{tag}[@name='{name}']")
    if element is None:  # dm_control changed its XML: fail loudly rather than build the wrong task
        raise RuntimeError(f"dm_control's XML has no {tag} named {name!r}; this dm_control version is unsupported.")
    return element


def load_variant(name: str, *, seed: int):
    """A modified task as a dm_control ``control.Environment`` (same task class as its base)."""
    from dm_control import suite
    from dm_control.rl import control

    variant = VARIANTS[name]
    module = getattr(suite, variant.domain)
    physics = module.Physics.from_xml_string(*variant_xml(variant))
    if variant.domain == "walker":
        task = module.PlanarWalker(move_speed=module._WALK_SPEED, random=seed)
        kwargs = dict(control_timestep=module._CONTROL_TIMESTEP)
    else:
        task, kwargs = module.Cheetah(random=seed), {}
    return control.Environment(physics, task, time_limit=module._DEFAULT_TIME_LIMIT, **kwargs)


def disable_shadows_and_reflections(model) -> None:
    """Fast rendering: no shadow pass, no reflections (about 3-4x faster on CPU at 64x64).

    Both fields only affect rendering, never the physics.
    """
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0


class PixelActionRepeat(pixels.Wrapper):
    """dm_env wrapper: repeat each action ``repeat`` times, sum the rewards, render once.

    dm_control's own ``pixels.Wrapper`` renders after every physics-level step, so an
    action repeat on top of it renders frames nobody sees; rendering dominates the cost on
    CPU. Frames are copied because dm_control reuses its render buffer. With ``state=True``
    the flattened physical observations are also returned, as float32 ``observation``.

    It subclasses ``pixels.Wrapper`` only because TorchRL's ``DMControlWrapper`` accepts
    that type; none of the parent's rendering runs (its ``__init__`` is not called).
    """

    def __init__(self, env, *, repeat: int, image_size: int, camera_id: int = 0, state: bool = False):
        self._env, self._repeat, self._state = env, repeat, state
        self._render_kwargs = dict(height=image_size, width=image_size, camera_id=camera_id)
        self._obs_spec = {"pixels": specs.Array((image_size, image_size, 3), np.uint8, name="pixels")}
        if state:
            size = sum(int(np.prod(spec.shape)) for spec in env.observation_spec().values())
            self._obs_spec["observation"] = specs.Array((size,), np.float32, name="observation")

    def __getattr__(self, name):  # physics, task, ... of the wrapped env
        return getattr(self._env, name)

    @property
    def action_repeat(self) -> int:
        return self._repeat

    def _observe(self, step: dm_env.TimeStep, reward) -> dm_env.TimeStep:
        with exclusive_render():  # another renderer may have changed the current context (envs/gl.py)
            obs = {"pixels": np.array(self._env.physics.render(**self._render_kwargs), copy=True)}
        if self._state:
            obs["observation"] = np.concatenate([np.ravel(v) for v in step.observation.values()]).astype(np.float32)
        return step._replace(observation=obs, reward=reward)

    def reset(self) -> dm_env.TimeStep:
        return self._observe(self._env.reset(), None)

    def step(self, action) -> dm_env.TimeStep:
        reward = 0.0
        for _ in range(self._repeat):
            step = self._env.step(action)
            reward += step.reward or 0.0
            if step.last():
                break
        return self._observe(step, reward)

    def observation_spec(self):
        return self._obs_spec

    def action_spec(self):
        return self._env.action_spec()

    def reward_spec(self):
        return self._env.reward_spec()

    def discount_spec(self):
        return self._env.discount_spec()


def make_dmc(task: str, *, seed: int, image_size: int, action_repeat: int, fast_render: bool = False,
             state: bool = False):
    """A suite task (``walker_walk``) or a variant (``walker_downhill``) as a TorchRL
    ``DMControlWrapper`` with a uint8 HWC ``pixels`` observation."""
    from dm_control import suite
    from torchrl.envs import DMControlWrapper

    if task in VARIANTS:
        env = load_variant(task, seed=seed)
    else:
        domain, name = split_suite_task(task)
        env = suite.load(domain, name, task_kwargs={"random": seed})
    if fast_render:
        disable_shadows_and_reflections(env.physics.model)
    return DMControlWrapper(PixelActionRepeat(env, repeat=action_repeat, image_size=image_size, state=state))


def suite_task_names() -> list[str]:
    """``<domain>_<task>`` for every task of the dm_control suite."""
    from dm_control import suite

    return sorted(f"{domain}_{task}" for domain, task in suite.ALL_TASKS)


def split_suite_task(task: str) -> tuple[str, str]:
    """``"ball_in_cup_catch"`` -> ``("ball_in_cup", "catch")`` (domains may contain ``_``)."""
    from dm_control import suite

    for domain, name in suite.ALL_TASKS:
        if f"{domain}_{name}" == task:
            return domain, name
    raise KeyError(task)
