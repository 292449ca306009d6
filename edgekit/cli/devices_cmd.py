"""`edgekit devices` and `edgekit devices setup arm64`: the deployment CPUs an int8 file can be judged on from
here, what each needs, and building the arm64 sysroot."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.app import app, console, handle_errors, print_json
from edgekit.cli.output import progress

devices_app = typer.Typer(help="Deployment CPUs for --device: emulated by QEMU (exact numerics, never timing) and "
                                "your boards over ssh (real timings).",
                          invoke_without_command=True, no_args_is_help=False)
app.add_typer(devices_app, name="devices")


@devices_app.callback()
@handle_errors
def devices_command(ctx: typer.Context, json_output: options.Json = False) -> None:
    """Deployment CPUs for --device: the host, x86 AVX2 / ARM64 cores emulated by QEMU (numerics only), and boards over ssh."""
    if ctx.invoked_subcommand is not None:
        return
    from edgekit.runtimes.boards import board_of, stored
    from edgekit.runtimes.devices import DEVICES, device_status
    from edgekit.runtimes.ssh import board_status

    statuses = [device_status(name) for name in DEVICES]
    statuses += [board_status(board_of(name), connect_timeout=5) for name in sorted(stored())]
    if json_output:
        print_json({"devices": [s.to_dict() for s in statuses],
                    "note": "emulated devices compute exactly as the real CPU does; their speed means nothing; "
                            "boards (ssh) are real CPUs: their timings are real"})
        return
    console.print(devices_table(statuses))


def devices_table(statuses) -> Table:
    """One row per device: how it runs here, what it is, what it still needs."""
    table = Table(title="devices for --device (emulated: exact numerics, no timing; boards over ssh: real timings)")
    for column in ("device", "runs", "what it is", "missing"):
        table.add_column(column)
    for s in statuses:
        runs = {"native": "natively", "emulated": "emulated (QEMU)", "unavailable": "[red]not here[/]",
                "ssh": "board (ssh)" if s.ready else "[red]board (ssh), not ready[/]"}[s.mode]
        table.add_row(s.name, runs, escape(s.about), escape("; ".join(s.missing)) or "-")
    return table


@devices_app.command("setup")
@handle_errors
def setup_command(
    name: Annotated[str, typer.Argument(help="arm64 (the sysroot serves arm64-a53 and arm64-a76)")],
    onnxruntime: Annotated[
        str | None, typer.Option("--onnxruntime", help="the device's onnxruntime version (default: this machine's)")
    ] = None,
    json_output: options.Json = False,
) -> None:
    """Build a device's sysroot under edgekit's cache, atomically (arm64: Debian's python3, numpy, onnxruntime)."""
    from edgekit.core.errors import BadInput

    if name.lower() not in ("arm64", "arm64-a53", "arm64-a76"):
        raise BadInput(f"nothing to set up for {name!r}",
                       hint="x86-avx2 needs only qemu-x86_64 (apt-get install qemu-user-static); set up arm64")
    from edgekit.runtimes.sysroot import setup_arm64

    with progress("arm64 sysroot") as shown:
        result = setup_arm64(onnxruntime, on_stage=shown.stage)
    if json_output:
        print_json(result)
        return
    console.print(f"arm64 sysroot ready: {escape(str(result.root))} ({result.bytes / 1e6:.0f} MB, "
                  f"{result.seconds:.0f} s): Python {result.python}, onnxruntime {result.onnxruntime}, "
                  f"numpy {result.numpy}, {escape(result.qemu)}")


@devices_app.command("add")
@handle_errors
def add_command(
    name: Annotated[str, typer.Argument(help="the board's name for --device (e.g. pi5)")],
    url: Annotated[str, typer.Argument(help="ssh://user@host[:port] (keys only: a password is refused)")],
    python: Annotated[str | None, typer.Option("--python", help="the board's interpreter (default: python3 on its PATH)")] = None,
    ssh_config: Annotated[str | None, typer.Option("--ssh-config", help="an ssh_config file, passed as ssh -F")] = None,
    json_output: options.Json = False,
) -> None:
    """Store your own board (reached over SSH with your keys and known_hosts) as a device for --device NAME."""
    from edgekit.runtimes.boards import add, boards_file

    board = add(name, url, python, ssh_config)
    if json_output:
        print_json({"name": board.name, "url": board.url, "python": board.python, "ssh_config": board.ssh_config,
                    "file": str(boards_file())})
        return
    console.print(f"board {escape(board.name)} stored in {escape(str(boards_file()))}: {escape(board.url)} "
                  f"(python: {escape(board.python)}); `edgekit devices` says whether it is reachable")


@devices_app.command("remove")
@handle_errors
def remove_command(name: Annotated[str, typer.Argument(help="a board stored with edgekit devices add")]) -> None:
    """Forget a stored board."""
    from edgekit.runtimes.boards import remove

    path = remove(name)
    console.print(f"board {escape(name)} removed from {escape(str(path))}")
