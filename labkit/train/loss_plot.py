"""The training-loss curve, saved as a PNG or drawn live in a notebook.

    from labkit.train.loss_plot import LiveLoss, save_loss_curve
    live = LiveLoss()                                  # in Jupyter: one figure that redraws
    result = finetune.train(settings, "runs/food", on_loss=live)
    save_loss_curve(result.losses, "loss.png")         # finetune.train already saves one

Losses are ``(iteration, loss)`` pairs, as `labkit.train.finetune` reports them.
"""
from __future__ import annotations

import time

from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend needed

from labkit.fileio import write_png


def draw_loss(ax, losses, title="training loss"):
    """Draw ``(iteration, loss)`` pairs on a matplotlib axis."""
    ax.clear()
    if losses:
        steps, values = zip(*losses)
        ax.plot(steps, values, marker="." if len(losses) < 60 else None, linewidth=1.5)
        ax.set_title(f"{title} (last {values[-1]:.4f} at iteration {steps[-1]})")
    else:
        ax.set_title(f"{title} (no iteration logged yet)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)


def save_loss_curve(losses, path, title="training loss"):
    """Save the loss curve as a PNG (written to a temp file, then renamed); return the path."""
    fig = Figure(figsize=(6, 3.5), dpi=100)
    draw_loss(fig.add_subplot(), losses, title)
    fig.tight_layout()
    return write_png(fig, path)


class LiveLoss:
    """A loss plot that redraws in place in Jupyter; pass it as ``on_loss`` to `finetune.train`.

    Outside a notebook it just collects the points. Redraws at most every ``every_s`` seconds,
    so a fast run is not slowed down by plotting.
    """

    def __init__(self, title="training loss", every_s=1.0):
        self.title, self.every_s = title, every_s
        self.losses = []
        self._last_draw = 0.0
        self._handle = None
        self._fig = self._ax = None

    def __call__(self, iteration, loss):
        self.losses.append((iteration, loss))
        if time.monotonic() - self._last_draw >= self.every_s:
            self.draw()

    def draw(self):
        """Redraw now (also call it once at the end to show the last point)."""
        self._last_draw = time.monotonic()
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        if self._fig is None:
            self._fig = Figure(figsize=(6, 3.5), dpi=100)
            self._ax = self._fig.add_subplot()
        draw_loss(self._ax, self.losses, self.title)
        self._fig.tight_layout()
        if self._handle is None:
            self._handle = display(self._fig, display_id=True)
        else:
            self._handle.update(self._fig)
