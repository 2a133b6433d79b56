"""Options several commands share (one definition, the same help everywhere)."""

from __future__ import annotations

import click

jobs_option = click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Parallel processes.",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
