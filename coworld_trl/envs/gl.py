"""Several MuJoCo renderers in one process: keep their EGL contexts from trampling each other.

dm_control (DMC, RoboDesk) and gymnasium (Meta-World) both render through EGL contexts on
the calling thread, and neither expects the other: gymnasium makes its context current
only when it creates it, and dm_control remembers which of its contexts it made current
and skips making it current again. After the other library renders, creates or frees a
context (freeing also releases the thread's current context), each would draw into the
wrong context or into none: blank or foreign frames, silently. A CoWorld run has exactly
this mix (e.g. a Meta-World source collector next to a RoboDesk evaluation env).

So every env of the registry makes its own context current right before it renders:
:func:`make_gymnasium_context_current` for Meta-World, and :func:`forget_dm_control_current`
before dm_control renders (it then makes its context current again; one cheap
``eglMakeCurrent`` per frame). Both touch private attributes of the two libraries, here
and nowhere else.
"""
from __future__ import annotations


def forget_dm_control_current() -> None:
    """Make dm_control's next render call ``eglMakeCurrent`` for its own context."""
    from dm_control._render import base

    base._CURRENT_CONTEXT_FOR_THREAD.clear()
    base._CURRENT_THREAD_FOR_CONTEXT.clear()


def make_gymnasium_context_current(env) -> None:
    """Make the context of a gymnasium MuJoCo env's offscreen viewer current (created if needed)."""
    env.unwrapped.mujoco_renderer._get_viewer("rgb_array").make_context_current()
