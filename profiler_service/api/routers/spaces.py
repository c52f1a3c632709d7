"""Search spaces (the named spaces of nas_ops.space.SPACES): their cells and the op spec of every candidate.

A client (the web page's heatmap) looks the specs up with ``POST /v1/lookup`` to see which entries of a space's
latency table F[cell, candidate] this device holds. Only named spaces are served: a request never names a file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from nas_ops.space import SPACES, ZERO_NAME, SearchSpace
from nas_ops.spec import MAX_RESOLUTION, format_spec
from profiler_service.api.errors import bad_request
from profiler_service.api.schemas import ErrorBody, FixedOp, SpaceCell, SpaceDetail, SpaceList, SpaceSummary

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


@router.get("/spaces", response_model=SpaceList, summary="The named search spaces")
def spaces() -> SpaceList:
    return SpaceList(spaces=[SpaceSummary(**_summary(space)) for space in SPACES.values()])


@router.get(
    "/spaces/{name}", response_model=SpaceDetail, summary="A search space's cells and candidate op specs",
    responses={422: {"model": ErrorBody, "description": "not a named search space, or a resolution out of range"}},
)
def space(
    name: Annotated[SpaceName, Path(examples=["tiny-32"])],
    resolution: Annotated[int | None, Query(ge=MIN_SPACE_RESOLUTION, le=MAX_RESOLUTION,
                                            description="move the space to this square input size")] = None,
) -> SpaceDetail:
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
    return SpaceDetail(**_summary(chosen), fixed=[FixedOp(role=r, spec=format_spec(s)) for r, s in zip(roles, fixed)],
                       cells=cells)
