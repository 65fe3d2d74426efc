"""Several MuJoCo renderers in one process: keep their EGL contexts from trampling each other.

dm_control (DMC, RoboDesk) and gymnasium (Meta-World) both render through EGL contexts on
the calling thread, and neither expects the other: gymnasium makes its context current
only when it creates it, and dm_control remembers which of its contexts it made current
and skips making it current again. After the other library renders, creates or frees a
context (freeing also releases the thread's current context), each would draw into the
wrong context or into none: blank or foreign frames, silently. A CoWorld run has exactly
this mix (e.g. a Meta-World source collector next to a RoboDesk evaluation env).

So every env of the registry renders inside :func:`exclusive_render`: it makes the env's
own context current right before drawing (dm_control is told to forget which context it
believes current, so it makes its own current again: one cheap ``eglMakeCurrent`` per
frame), and it pauses Python's cyclic garbage collector while drawing, because a context
freed by the collector in the middle of a render (an env nobody closed) would unbind the
one in use. The helpers touch private attributes of the two libraries, here and nowhere
else.

One case is left that this does not explain: in long test sessions that create and free
many contexts, a Meta-World env created right after others was seen to draw nothing at
all with its own context current (root cause not found; Mesa llvmpipe, EGL). An all-black
frame is never a real Meta-World frame, so ``PixelRepeat`` then rebuilds its viewer once
and renders again; the regression tests compare such envs with twins rendered alone.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Callable


def forget_dm_control_current() -> None:
    """Make dm_control's next render call ``eglMakeCurrent`` for its own context."""
    from dm_control._render import base

    base._CURRENT_CONTEXT_FOR_THREAD.clear()
    base._CURRENT_THREAD_FOR_CONTEXT.clear()


def make_gymnasium_context_current(env) -> None:
    """Make the context of a gymnasium MuJoCo env's offscreen viewer current (created if needed)."""
    env.unwrapped.mujoco_renderer._get_viewer("rgb_array").make_context_current()


@contextlib.contextmanager
def exclusive_render(make_current: Callable[[], None] | None = None):
    """Render with this env's context current and no garbage collection meanwhile.

    ``make_current`` makes a gymnasium context current; dm_control renders need none
    (forgetting its cache is enough).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        forget_dm_control_current()
        if make_current is not None:
            make_current()
        yield
    finally:
        if collecting:
            gc.enable()
