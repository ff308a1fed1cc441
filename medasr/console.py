"""The one console every stage prints to."""

from rich.console import Console

# soft_wrap: messages are not hard-wrapped at the terminal width, so a path or command in them stays one
# copy-pasteable piece (the terminal wraps it for display) and a test's assertion does not depend on a path's length.
console = Console(soft_wrap=True)
