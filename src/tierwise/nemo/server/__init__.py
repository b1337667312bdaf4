"""Nemo as a memcached-compatible cache service: text protocol (`protocol`), item header (`items`), command
semantics over an `Engine` (`commands`), the acknowledgement journal (`journal`) and the asyncio server (`server`)."""
