"""The studio's settings, declared as training's are (the command line's flags and help come from here), over
the limits every imgclf server has."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import setting
from ..serve.settings import ServerLimits


@dataclass(kw_only=True)
class StudioSettings(ServerLimits):
    """Who may use the studio (its limits are every server's: the page sends each image in its own request)."""

    token: str | None = setting(
        None,
        help="a secret every request must carry (the page keeps it in a cookie once opened with ?token=T; scripts "
        "send `Authorization: Bearer T`); required, and made up when not given, on any address but this machine's",
        default_text="none on 127.0.0.1; a random one elsewhere",
    )
