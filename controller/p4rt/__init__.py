"""Our own asyncio P4Runtime client, built on finsy's protobuf stubs only (see docs/controller.md)."""

from controller.p4rt.client import (  # noqa: F401
    NotPrimary,
    P4RTError,
    SwitchClient,
    UpdateError,
    decode_write_errors,
)
