"""The `shanshui` command: one module per command group, each parsing, validating and calling one library function.
Every failure is a one-line `error:` and a non-zero exit."""

from __future__ import annotations

import os
import signal
import sys

import typer
from typer.core import TyperGroup

from shanshui.cli.bench import bench
from shanshui.cli.data import app as data_app
from shanshui.cli.engine import app as engine_app
from shanshui.cli.evaluate import eval_
from shanshui.cli.generate import generate
from shanshui.cli.lowmem import lowmem
from shanshui.cli.model import export, init, quantize
from shanshui.cli.serve import serve
from shanshui.cli.train import app as train_app
from shanshui import limits
from shanshui.errors import ShanshuiError

# typer >= 0.20 vendors click and raises its own exceptions under TyperException; older typer raises click's.
CommandLineError = getattr(typer, "TyperException", None) or __import__("click").ClickException


class OneLineErrors(TyperGroup):
    """Every failure (bad option, ShanshuiError, Ctrl-C) becomes `error: …` on stderr and a non-zero exit."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except CommandLineError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # plain `shanshui`: show the help
                e.show()
                return self._exit(0, standalone_mode)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None and e.exit_code == 2 else ""
            code, msg = e.exit_code, f"{e.format_message()}{hint}"
        except ShanshuiError as e:
            code, msg = 1, str(e)
        except (typer.Abort, KeyboardInterrupt, limits.Interrupted):
            if standalone_mode:  # a second Ctrl-C (or one torch re-delivers) must not cut the exit short
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            code, msg = 130, "interrupted"
        except (OSError, MemoryError) as e:  # a full disk, a read-only folder, no memory left: still one line
            code, msg = 1, limits.system_error_message(e)
        else:
            return self._exit(rv if isinstance(rv, int) else 0, standalone_mode)
        typer.echo(f"error: {' '.join(msg.split())}", err=True)
        if code == 130 and standalone_mode:  # temp files are gone; interpreter shutdown could still meet a
            sys.stdout.flush()  # KeyboardInterrupt torch left pending and die by signal instead of exiting 130
            sys.stderr.flush()
            os._exit(130)
        return self._exit(code, standalone_mode)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # typer would turn it into a silent exit 130; temp files are gone by now
            raise limits.Interrupted() from None

    @staticmethod
    def _exit(code: int, standalone_mode: bool) -> int:
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="shanshui: text-to-image Chinese landscape painting (山水画), from training to fast inference.",
)

app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(engine_app, name="engine")
app.command()(bench)
app.command()(serve)
app.command()(lowmem)
app.command()(init)
app.command()(export)
app.command()(quantize)
app.command()(generate)
app.command(name="eval")(eval_)


def main() -> None:
    app()

