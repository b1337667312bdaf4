"""Defaults shared by the replay driver, the bench and the CLI (kept free of compiled code, so the CLI starts fast)."""

DEFAULT_RATE = 100_000.0  # requests per second arriving at the cache when replaying at a fixed rate
DEFAULT_PROFILE = "zn540"  # simulated device timing (tierwise.nemo.device.timing.PROFILES)
