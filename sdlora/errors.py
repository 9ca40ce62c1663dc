"""The one exception type for mistakes a user can fix.

Anything raised as `SdloraError` is the user's to fix (a bad preset key, a missing folder, a file that is not
a LoRA). The CLI turns it into exit code 2 and a single line on stderr; every other exception is a failure
during work (exit 1). The message must name the file or key and say what to do.
"""


class SdloraError(Exception):
    """A user error: the message is one line that names the file or key and what to do."""
