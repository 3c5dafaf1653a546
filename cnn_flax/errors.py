"""The one exception type for mistakes a user can fix (bad config value, missing file, wrong shape).

The launcher prints these as a single line and exits non-zero; anything else is a bug and keeps its
traceback. Every package may import this module; it imports nothing.
"""


class UserError(Exception):
    """A problem with the user's input, stated in one line that names the file or key and the fix."""
