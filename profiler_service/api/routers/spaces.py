"""Search spaces (the named spaces of nas_ops.space.SPACES): their cells and the op spec of every candidate.

A client (the web page's heatmap) looks the specs up with ``POST /v1/lookup`` to see which entries of a space's
latency table F[cell, candidate] this device holds. A space's detail carries the working set of its typical network
and the regime and protocol version this device's protocol gives it, so a client that knows only the space asks for
the rows ``lut`` stored. Only named spaces are served: a request never names a file.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from nas_ops.counting import space_working_set_bytes
from nas_ops.space import SPACES, ZERO_NAME, SearchSpace
from nas_ops.spec import MAX_RESOLUTION, format_spec
from profiler_service.engine.protocol import MAX_BATCH
from profiler_service.api.deps import StateDep
from profiler_service.api.errors import bad_request
from profiler_service.api.limits import check_batch
from profiler_service.api.schemas import DType, ErrorBody, FixedOp, SpaceCell, SpaceDetail, SpaceList, SpaceSummary

router = APIRouter(tags=["spaces"])

#: The names a request may give: the named spaces (an enum in the schema, so it says exactly what is accepted).
SpaceName = Literal[tuple(SPACES)]  # type: ignore[valid-type]
#: The smallest input size a space may be moved to (a stride-2 stem and stages need something to halve).
MIN_SPACE_RESOLUTION = 8


def _column_names(space: SearchSpace) -> list[str]:
    names = [candidate.name for candidate in space.candidates]
    if any(cell.zero_index is not None for cell in space.cells()):
        names.append(ZERO_NAME)
    return names


def _summary(space: SearchSpace) -> dict[str, Any]:
    return {"name": space.name, "input_size": list(space.input_size), "cell_count": len(space.cells()),
            "candidate_names": _column_names(space)}


@functools.lru_cache(maxsize=256)
def _working_set(name: str, resolution: int | None, batch: int, dtype: str) -> int:
    """The working set of a named space's typical network at ``resolution`` (None: its own), ``batch``, ``dtype``."""
    space = SPACES[name]
    if resolution is not None:
        space = space.with_resolution(resolution, resolution)
    return space_working_set_bytes(space, batch, dtype)


@router.get("/spaces", response_model=SpaceList, summary="The named search spaces")
def spaces() -> SpaceList:
    return SpaceList(spaces=[SpaceSummary(**_summary(space)) for space in SPACES.values()])


@router.get(
    "/spaces/{name}", response_model=SpaceDetail, summary="A search space's cells and candidate op specs",
    responses={422: {"model": ErrorBody, "description": "not a named search space, or a resolution out of range"}},
)
def space(
    state: StateDep,
    name: Annotated[SpaceName, Path(examples=["tiny-32"])],
    resolution: Annotated[int | None, Query(ge=MIN_SPACE_RESOLUTION, le=MAX_RESOLUTION,
                                            description="move the space to this square input size")] = None,
    batch: Annotated[int, Query(ge=1, le=MAX_BATCH, description="the batch of the table's measurements (at most "
                                "the service's max_batch)")] = 1,
    dtype: Annotated[DType, Query(description="the dtype of the table's measurements")] = "float32",
) -> SpaceDetail:
    check_batch(state.settings, batch)
    chosen = SPACES[name]
    if resolution is not None:
        try:
            chosen = chosen.with_resolution(resolution, resolution)
        except ValueError as exc:
            raise bad_request(f"resolution: {exc}") from None
    fixed = chosen.fixed_specs()
    roles = ["stem", "first_block", *(["mix"] if chosen.mix_chs is not None else []), "head"]
    cells = [
        SpaceCell(index=cell.index, stage=cell.stage, in_chs=cell.in_chs, out_chs=cell.out_chs, height=cell.height,
                  width=cell.width, stride=cell.stride, candidates=[format_spec(c) for c in cell.candidates],
                  candidate_names=list(cell.candidate_names), zero_index=cell.zero_index)
        for cell in chosen.cells()
    ]
    working_set = _working_set(name, resolution, batch, dtype)
    protocol = state.protocol_for(working_set)
    return SpaceDetail(**_summary(chosen), fixed=[FixedOp(role=r, spec=format_spec(s)) for r, s in zip(roles, fixed)],
                       cells=cells, working_set_bytes=working_set, regime=protocol.regime,
                       protocol_version=protocol.version)
