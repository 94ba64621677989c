"""Long work as a :class:`Job`: ``work`` runs anywhere (a worker thread in Slicer) and touches
only numpy and torch; ``finish`` writes to the scene on the main thread."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import NoduleSAMError
from .parameters import Parameters


class Cancelled(Exception):
    """Raised inside a job's work when the user pressed Cancel."""


@dataclass
class Job:
    """Long work split by thread: ``work(progress)`` touches no MRML and may run on a worker
    thread; ``finish(result)`` writes to the scene on the main thread and returns a summary.

    progress: callable(done, total, text) that raises :class:`Cancelled` to stop the work.
    """

    title: str
    work: Callable
    finish: Callable
    # the parameters the job was made from: it finishes (and chains) on them even after the
    # widget unbound its own (the user left the module)
    params: Parameters | None = None

    def run(self, progress=None):
        """Both halves on this thread (tests, scripts, the self-test)."""
        return self.finish(self.work(progress or (lambda done, total, text="": None)))


def check_same_ct(params: Parameters, volume_node, title: str) -> None:
    """A job's finish writes nothing unless its CT is still the input and still in the scene
    (the user may switch volumes, or close the scene, while the work runs)."""
    if params.inputVolume is not volume_node or volume_node.GetScene() is None:
        raise NoduleSAMError(f"the CT changed or the scene was closed during {title}; nothing "
                             f"was written: press {title} again")
