"""The platform's one exception root, and the line between a user's mistake and a bug.

`PlatformError` is the root of every exception the platform raises on purpose. `UserError` is the part
a user can act on, so its message is written for them: bad input (a drop, a request, a labels file), a
bad setting, a refusal (a registry transition it does not allow, a deployment lock not taken in time, no
candidate fit to register), something named that does not exist (a drop, a version, a request id), or
what the platform needs from its surroundings not answering (storage, PostgreSQL, the endpoint).

Every other exception is a bug: a `PlatformError` that is not a `UserError` (an invariant of the code
broken, e.g. metrics asked of frames of different lengths) as much as a library's own error. The CLI
prints a user error as one line, and for a bug writes the traceback to the home's log (mlplatform/errors.py).

Exceptions keep the built-in bases their callers catch: a SettingsError is still a ValueError, a
LockTimeout still a TimeoutError.
"""

from __future__ import annotations


class PlatformError(Exception):
    """Raised on purpose by the platform; not a UserError: a bug (an invariant of the code broken)."""


class UserError(PlatformError):
    """Bad input, a bad setting, a refusal or an unavailable dependency: the message is for the user."""
