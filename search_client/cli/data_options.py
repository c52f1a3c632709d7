"""The data options of ``search`` and ``train``: one set of Typer options, read into one
:class:`search_client.training.datasets.DataOptions` (whose field defaults are the options' defaults).

A command declares them as parameters ``data: DataSource = DATA.source, workers: Workers = DATA.workers, ...`` and
builds the options with :func:`data_options`; the flags (``--data``, ``--workers``, ``--valid-per-class``,
``--val-folder``, ``--color-jitter``) are the same in both commands.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from search_client.training.datasets import DataOptions
from search_client.training.synthetic_tasks import TASKS

#: The defaults of the data options.
DATA = DataOptions()

DataSource = Annotated[str, typer.Option(
    "--data", help=f"digits | synthetic[:N[:K]] | synthetic:NAME[:N] (NAME: {', '.join(TASKS)}) | image folder "
                   "| .npz file")]
Workers = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes that decode images")]
ValidPerClass = Annotated[Optional[int], typer.Option(
    "--valid-per-class", min=1, help="images per class held out of train (the architecture steps' and the "
                                     "evaluation's split); default: a fraction")]
ValFolder = Annotated[bool, typer.Option("--val-folder", help="hold out the folder's val/ instead (architecture "
                                                              "steps, evaluation)")]
ColorJitter = Annotated[float, typer.Option("--color-jitter", min=0.0,
                                            help="colour jitter strength of the weight steps (0: off)")]


def data_options(data: str, workers: int, valid_per_class: int | None, val_folder: bool,
                 color_jitter: float) -> DataOptions:
    """The :class:`DataOptions` of the data options' values (ValueError naming a bad one)."""
    return DataOptions(source=data, valid_per_class=valid_per_class, val_folder=val_folder, workers=workers,
                       color_jitter=color_jitter)
