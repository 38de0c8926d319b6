"""The CLI's core commands, one module per concern; each registers its commands with :func:`arith.cli.command` on
import (``arith.cli`` imports them all).  Importing them imports no tensor library: commands import what they
need when they run."""
