"""The framework-neutral half of d2l's ``Module``.

Each backend's ``Module`` is ``class Module(ModuleBase, <framework module>)``
(``torch.nn.Module``, ``keras.Model``, ``gluon.Block``, ``flax.linen.Module``),
so a d2l reader gets the framework's own class plus d2l's methods, written
once here: ``loss``, ``forward``, ``training_step``, ``validation_step``,
``configure_optimizers``, ``plot`` and the ``board`` it draws on.

How a step's loss reaches the trainer: a step *returns* its loss (d2l's
``training_step`` does). ``self.plot('loss', l, train)`` hands the value to
the trainer too (see :meth:`d2lx.trainer.TrainerBase.observe`): inside
d2lx's own loop it only stands in for a missing return value (d2l's
``validation_step`` returns nothing), and in a d2l-style ``fit_epoch``
written by the reader it is how the trainer hears of the loss at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from d2lx.board import ProgressBoard
from d2lx.hyperparameters import HyperParameters


class ModuleBase(HyperParameters):
    """d2l's ``Module`` API (see the module docstring)."""

    trainer: Any = None
    #: d2l's board resolution: train points per epoch, validation points per epoch.
    plot_train_per_epoch: int = 2
    plot_valid_per_epoch: int = 1

    if TYPE_CHECKING:  # the framework's module class provides __call__ at run time

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    @property
    def board(self) -> ProgressBoard:
        """The :class:`~d2lx.board.ProgressBoard` this model's losses are drawn on (made on first use).

        Kept in the instance ``__dict__`` directly: it is host-side state, not
        a layer for the framework to track (and flax modules are frozen).
        """
        board = self.__dict__.get("_d2lx_board")
        if board is None:
            board = self.__dict__["_d2lx_board"] = ProgressBoard()
        return board

    @board.setter
    def board(self, value: ProgressBoard) -> None:
        self.__dict__["_d2lx_board"] = value

    def loss(self, y_hat: Any, y: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define loss(y_hat, y)")

    def forward(self, X: Any) -> Any:
        net = getattr(self, "net", None)
        if net is None:
            raise NotImplementedError(f"{type(self).__name__} must define forward(X), or a layer self.net")
        return net(X)

    def configure_optimizers(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define configure_optimizers()")

    def training_step(self, batch: Any) -> Any:
        l = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("loss", l, train=True)
        return l

    def validation_step(self, batch: Any) -> Any:
        l = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("loss", l, train=False)
        return l

    def plot(self, key: str, value: Any, train: bool) -> None:
        """Report a value of the current step (d2l draws it on ``self.board``; see the module docstring).

        Without a trainer (a step called by hand) there is no epoch to draw
        it at, and nothing happens.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            trainer.observe(self, key, value, train)

    def log(self, key: str, value: Any, train: bool = True, count: int = 1) -> None:
        """Earlier d2lx name for :meth:`plot` (``count`` is ignored: batch sizes are known)."""
        self.plot(key, value, train)
