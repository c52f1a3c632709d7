"""``proxyless-profiler``: serve the API, measure ops locally, show this device's fingerprint."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from profiler_service.engine.protocol_presets import ResolvedProtocol
from profiler_service.settings import ProfilerSettings

app = typer.Typer(
    name="proxyless-profiler",
    help="Device-side latency profiler: measures candidate ops and serves F(o) over REST.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and a non-zero exit: the CLI's way to reject bad input."""
    typer.echo(f"error: {message}", err=True)  # never wrapped: one line, whatever the terminal's width
    raise typer.Exit(code)


def build_settings(**overrides: Any) -> ProfilerSettings:
    """Settings from the environment, with the CLI options that were given on top."""
    try:
        return ProfilerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: ProfilerSettings) -> None:
    """Refuse a non-loopback bind without a token unless explicitly allowed."""
    if not is_loopback(settings.host) and settings.token is None and not settings.allow_insecure_bind:
        fail(
            f"refusing to listen on {settings.host} without a token: set --token (or PROFILER_TOKEN), "
            "or pass --allow-insecure-bind if this network is trusted"
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    db: Annotated[str | None, typer.Option(help="database URL (sqlite:///file.db or postgresql+psycopg://...)")] = None,
    backends: Annotated[str | None, typer.Option(help="comma-separated backends to serve (default: all available)")] = None,
    threads: Annotated[int | None, typer.Option(help="default thread count of a measurement")] = None,
    token: Annotated[str | None, typer.Option(help="bearer token for mutating endpoints (or PROFILER_TOKEN)")] = None,
    allow_insecure_bind: Annotated[bool, typer.Option(help="allow a non-loopback bind without a token")] = False,
    device_name: Annotated[str | None, typer.Option(help="name of this device (default: hostname)")] = None,
    protocol: Annotated[str | None, typer.Option(help="protocol preset: auto (default: the cache regime follows "
                                                 "each request's working set) | cold | warm | fast")] = None,
    duet: Annotated[bool | None, typer.Option("--duet/--no-duet", help="measure in a duet with a reference op, "
                                              "so that drift of the machine cancels (default on, or "
                                              "PROFILER_DUET); --no-duet: plain timings")] = None,
    allowed_hosts: Annotated[str | None, typer.Option(help="comma-separated Host names clients reach the service "
                                                      "by, besides 127.0.0.1, localhost, ::1 and a specific --host "
                                                      "('*' any; or PROFILER_ALLOWED_HOSTS)")] = None,
    allowed_origins: Annotated[str | None, typer.Option(help="comma-separated origins (https://host[:port]) whose "
                                                        "pages may POST, besides the service's own (or "
                                                        "PROFILER_ALLOWED_ORIGINS)")] = None,
    take_over: Annotated[bool, typer.Option("--take-over", help="start even when another live service serves "
                                            "this device (same name and fingerprint) on this database; that one "
                                            "stops measuring (or PROFILER_TAKE_OVER)")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the REST API (migrates the database to head first). Health: GET /v1/health.

    Every start-up problem (unknown backend, port in use, database missing or not writable, the device already
    served by another live service on the database) is one line on stderr and a non-zero exit, before anything
    says "serving on".
    """
    from profiler_service.api.app import create_app
    from profiler_service.api.browser_safety import LOOPBACK_NAMES, WILDCARD_BINDS
    from profiler_service.api.server import serve_app
    from profiler_service.api.startup import StartupError, open_service, shown_url

    settings = build_settings(
        host=host, port=port, db_url=db, backends=backends, threads=threads, token=token,
        allow_insecure_bind=allow_insecure_bind or None, device_name=device_name, protocol=protocol,
        duet=duet, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins, take_over=take_over or None,
    )
    check_bind(settings)
    try:
        sock, state = open_service(settings)
    except StartupError as exc:
        fail(str(exc), code=exc.exit_code)
    application = create_app(settings, state)
    where = f"http://{settings.host}:{settings.port} (db {shown_url(settings.db_url)})"
    typer.echo(f"proxyless-profiler: serving on {where}", err=True)
    if settings.host in WILDCARD_BINDS and not settings.allowed_host_names():
        typer.echo(f"proxyless-profiler: answering requests for {', '.join(LOOPBACK_NAMES)} only; clients that "
                   "reach this device by another name or address need it in --allowed-hosts "
                   "(PROFILER_ALLOWED_HOSTS)", err=True)
    serve_app(application, application.state.stopping, sock, log_level, settings)


def _specs_from(specs: list[str], space: str | None) -> list[str]:
    from nas_ops.spec import format_spec, parse_canonical_spec

    texts = list(specs)
    if space:
        from nas_ops.space import load_space

        loaded = load_space(space)
        texts += [format_spec(s) for s in loaded.fixed_specs()]
        texts += [format_spec(c) for cell in loaded.cells() for c in cell.candidates if c.kind != "zero"]
    if not texts:
        fail("give op specs or --space")
    for text in texts:
        parse_canonical_spec(text)  # ValueError names the field (or the canonical spelling)
    return list(dict.fromkeys(texts))


def local_protocol(preset: str, space: str | None, batch: int, dtype: str, duet: bool = False) -> ResolvedProtocol:
    """The protocol of a local measurement: ``preset``, with ``auto`` resolved from the working set of ``space``'s
    typical network and this machine's per-core cache (cold without a space), in a duet when ``duet``."""
    from nas_ops.counting import space_working_set_bytes
    from nas_ops.space import load_space
    from profiler_service.engine.cache_regime import read_core_cache
    from profiler_service.engine.protocol_presets import ServiceProtocol

    working_set = space_working_set_bytes(load_space(space), batch, dtype) if space else None
    return ServiceProtocol(preset, read_core_cache(), duet).for_working_set(working_set)


@app.command()
def measure(
    specs: Annotated[list[str] | None, typer.Argument(help="op specs, e.g. mbconv_r56x56_c24-24_k3_e6_s1_relu6_skip")] = None,
    space: Annotated[str | None, typer.Option(help="also measure every op of this search space (name or file)")] = None,
    backend: Annotated[str, typer.Option(help="backend name")] = "ort-cpu",
    batch: Annotated[int, typer.Option(min=1, max=1024)] = 1,
    dtype: Annotated[str, typer.Option(help="float32 | float16 (CUDA)")] = "float32",
    threads: Annotated[int, typer.Option(min=1, max=256)] = 1,
    protocol: Annotated[str, typer.Option(help="auto (the cache regime of --space's working set; cold without "
                                          "--space) | cold | warm | fast")] = "auto",
    duet: Annotated[bool, typer.Option(help="time every block between two blocks of a reference op and report it "
                                       "relative to them (as serve --duet; the scale of this run's baseline)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="also write the stats as JSON here")] = None,
) -> None:
    """Measure ops on this machine without a server and print their stats (progress bar on long sweeps)."""
    from nas_ops.spec import parse_spec
    from profiler_service.engine.backends import get_backend
    from profiler_service.engine.calibration import CalibrationCache
    from nas_ops.counting import count_flops
    from profiler_service.engine.protocol import measure_op_round
    from profiler_service.engine.rounds import stored_result

    from profiler_service.api.errors import ApiError
    from profiler_service.api.limits import check_spec_limits

    try:
        texts = _specs_from(specs or [], space)
        engine = get_backend(backend)
        resolved = local_protocol(protocol, space, batch, dtype, duet)
        params = resolved.params
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
        limits = build_settings()
        for text in texts:  # the service's limits (PROFILER_MAX_*), checked before anything is built
            check_spec_limits(limits, parse_spec(text), batch, dtype, text)
    except ValueError as exc:
        fail(str(exc))
    except ApiError as exc:
        fail(exc.detail)
    if params.duet_reference is not None:
        from profiler_service.engine.duet import DuetBackend, start_protocol_duet

        try:
            engine = DuetBackend(engine, start_protocol_duet(engine, threads, params))
        except (RuntimeError, ValueError) as exc:
            fail(f"duet reference {params.duet_reference}: {exc}", code=1)
    results: dict[str, dict[str, float | str | None]] = {}
    calibration = CalibrationCache()  # one session: the command's ops share their calibration values
    with Progress(TextColumn("[bold]measuring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=err, transient=True,
                  disable=len(texts) < 2) as progress:
        task = progress.add_task("", total=len(texts))
        for text in texts:
            progress.update(task, description=text)
            try:
                spec = parse_spec(text)
                measured = measure_op_round(spec, engine, batch, dtype, threads, params, calibration)
                # the service's rule for what one measurement stores: no 0 ms for an op that costs multiply-adds
                result = stored_result([measured], params, costs_compute=count_flops(spec) > 0)
                results[text] = {**result.stats.as_dict(), "flagged": result.flagged}
            except (RuntimeError, ValueError) as exc:
                fail(f"{text}: {exc}", code=1)
            progress.advance(task)
    document = {"backend": backend, "batch": batch, "dtype": dtype, "threads": threads,
                "protocol_version": resolved.version, "stats": results}
    if out_file is not None:
        out_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(document) + "\n")
        return
    table = Table(title=f"{backend}, batch {batch}, {threads} thread(s), protocol {document['protocol_version']}")
    for column in ("op", "median ms", "p10", "p90", "IQR", "runs"):
        table.add_column(column, justify="left" if column == "op" else "right")
    for text, s in results.items():
        table.add_row(text, f"{s['median_ms']:.4f}", f"{s['p10_ms']:.4f}", f"{s['p90_ms']:.4f}",
                      f"{s['iqr_ms']:.4f}", str(s["samples"]))
    out.print(table)
    for text, s in results.items():
        if s["flagged"]:
            out.print(f"flagged {text}: {s['flagged']}")


@app.command()
def info(
    threads: Annotated[int, typer.Option(min=1, max=256)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """This device's fingerprint and the backends available here."""
    from profiler_service.engine.backends import available_backends
    from profiler_service.engine.fingerprint import device_fingerprint, env_hash, environment
    from profiler_service.engine.cache_regime import read_core_cache
    from profiler_service.engine.protocol import PROTOCOL_VERSION

    fingerprint = device_fingerprint()
    cache = read_core_cache()
    backends = [{"name": b.name, "options": b.options, "env_hash": env_hash(environment(b, threads))}
                for b in available_backends()]
    if as_json:
        sys.stdout.write(json.dumps({"fingerprint": fingerprint, "backends": backends,
                                     "protocol_version": PROTOCOL_VERSION, "cache": cache.as_dict()},
                                    default=str) + "\n")
        return
    table = Table(title="device fingerprint")
    table.add_column("key")
    table.add_column("value")
    for key, value in fingerprint.items():
        table.add_row(key, str(value))
    table.add_row("per-core cache (auto protocol)", cache.source)
    out.print(table)
    backend_table = Table(title=f"available backends (threads={threads}, protocol {PROTOCOL_VERSION})")
    for column in ("backend", "options", "env hash"):
        backend_table.add_column(column)
    for b in backends:
        backend_table.add_row(b["name"], json.dumps(b["options"]), b["env_hash"][:16])
    out.print(backend_table)


@app.command()
def rebaseline(
    backend: Annotated[str | None, typer.Option(help="the backend whose canary references to measure anew "
                                                "(default: every backend of the settings)")] = None,
    db: Annotated[str | None, typer.Option(help="database URL (default: the settings', PROFILER_DB_URL)")] = None,
) -> None:
    """Measure new canary references for this device, without a server: the canaries are measured twice and
    the stored references replaced when the two agree (docs/protocol.md, "Canaries and drift"). Stop the
    service's measurements first: one measurement at a time on a device."""
    from latency_db.migrate import upgrade_to_head
    from profiler_service.api.state import ServiceState
    from profiler_service.jobs.canaries import CanariesUnsettled

    overrides: dict[str, Any] = {"db_url": db}
    if backend is not None:
        overrides["backends"] = backend
    try:
        settings = build_settings(**overrides)
        upgrade_to_head(settings.db_url)
        state = ServiceState(settings)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    try:
        reports = state.worker.rebaseline_canaries(state.backends)
    except CanariesUnsettled as exc:
        fail(f"{exc}; stop other work on the device and run rebaseline again", code=1)
    except ValueError as exc:
        fail(str(exc))
    finally:
        state.close()
    for name, report in reports.items():
        references = ", ".join(f"{r.op_spec} {r.reference_ms:.4g} ms" for r in report.readings)
        typer.echo(f"{name}: canary references re-established: {references}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
